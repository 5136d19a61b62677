//! Benchmark folders as SR papers lay them out (Set5, Set14, B100, Urban100, Manga109, DIV2K val):
//! `DIR/HR/*.png` plus optionally `DIR/LR_bicubic/X<scale>/<stem>x<scale>.png`; without that folder the LR is
//! made with MATLAB bicubic. A folder of HR images without `HR/` works too. Used by `eval`, the demo and the
//! trainer's full-image validation.

use std::path::{Path, PathBuf};

use image::RgbImage;
use srcache_ingest::{ImageEntry, ScanConfig, Skipped};

use crate::error::{ExpertError, Result};

/// Where a benchmark folder's HR images live.
pub fn hr_dir(dir: &Path) -> PathBuf {
    if dir.join("HR").is_dir() {
        dir.join("HR")
    } else {
        dir.to_path_buf()
    }
}

/// Where a benchmark folder's LR images for `scale` live (whether or not they exist).
pub fn lr_dir(dir: &Path, scale: u32) -> PathBuf {
    dir.join(format!("LR_bicubic/X{scale}"))
}

/// One benchmark folder: its name and images (by name order, at most `max` when `max > 0`), plus the files
/// that cannot be used (unpaired), which callers report.
pub struct BenchmarkFolder {
    pub name: String,
    pub dir: PathBuf,
    pub scale: u32,
    pub entries: Vec<ImageEntry>,
    pub skipped: Vec<Skipped>,
}

/// A loaded benchmark image: HR mod-cropped to the scale, and its LR.
pub struct BenchmarkImage {
    pub name: String,
    pub hr: RgbImage,
    pub lr: RgbImage,
}

impl BenchmarkFolder {
    pub fn scan(dir: &Path, scale: u32, max: usize) -> Result<BenchmarkFolder> {
        let lr = lr_dir(dir, scale);
        let cfg = ScanConfig { hr_dir: hr_dir(dir), lr_dir: lr.is_dir().then_some(lr), scale };
        let report = srcache_ingest::scan(&cfg).map_err(|e| ExpertError::Image {
            path: dir.to_path_buf(),
            what: "cannot scan benchmark folder".into(),
            source: Some(Box::new(e)),
        })?;
        let mut entries = report.images;
        if max > 0 {
            entries.truncate(max);
        }
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(BenchmarkFolder { name, dir: dir.to_path_buf(), scale, entries, skipped: report.skipped })
    }

    /// Decodes entry `i` (LR generated with MATLAB bicubic when not paired).
    pub fn load(&self, i: usize) -> Result<BenchmarkImage> {
        let entry = &self.entries[i];
        let img = srcache_ingest::prepare_image(entry, self.scale).map_err(|e| ExpertError::Image {
            path: entry.hr.clone(),
            what: "cannot use this benchmark image".into(),
            source: Some(Box::new(e)),
        })?;
        Ok(BenchmarkImage { name: entry.stem.clone(), hr: img.hr, lr: img.lr })
    }
}
