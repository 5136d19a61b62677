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

/// Photos split into a training folder and a held-out benchmark folder ([`hold_out_photos`]).
#[derive(Debug, Clone)]
pub struct HeldOutSplit {
    /// `OUT/data/train_HR`: the photos to cache and train on.
    pub train: PathBuf,
    /// `OUT/data/DemoVal`: a benchmark folder (`HR/` + MATLAB-bicubic `LR_bicubic/X<scale>/`).
    pub bench: PathBuf,
    /// The held-out stems, in the order they were chosen.
    pub held: Vec<String>,
    pub n_train: usize,
    pub n_val: usize,
    /// Where the held-out LR was written, and how many images (none are skipped: the write is strict).
    pub lr_dir: PathBuf,
    pub lr_written: usize,
}

impl std::fmt::Display for HeldOutSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} training photos, {} held out ({}); wrote {} LR images to {}",
            self.n_train,
            self.n_val,
            self.held.join(", "),
            self.lr_written,
            self.lr_dir.display()
        )
    }
}

/// Copies `photos` into a training folder and a held-out benchmark folder under `out`, then writes the held-out
/// set's MATLAB-bicubic LR. Held out: the stems in `held_out`; when that is empty, `default_held` if the folder
/// has all of them, else the last fifth of the photos by name (at least one). Used by the demo and `bench fidelity`.
pub fn hold_out_photos(photos: &Path, out: &Path, scale: u32, held_out: &[String], default_held: &[&str]) -> Result<HeldOutSplit> {
    let files = srcache_ingest::scan::list_images(photos).map_err(|e| image_error(photos, "cannot list the photos", e))?;
    let stem = |f: &Path| f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let stems: Vec<String> = files.iter().map(|f| stem(f)).collect();
    let held: Vec<String> = if !held_out.is_empty() {
        if let Some(missing) = held_out.iter().find(|h| !stems.contains(h)) {
            return Err(ExpertError::File {
                path: photos.to_path_buf(),
                what: format!("no photo named {missing:?} to hold out (have: {})", stems.join(", ")),
            });
        }
        held_out.to_vec()
    } else if !default_held.is_empty() && default_held.iter().all(|h| stems.iter().any(|s| s == h)) {
        default_held.iter().map(|s| s.to_string()).collect()
    } else {
        let mut sorted = stems.clone();
        sorted.sort();
        let n = sorted.len().div_ceil(5).max(1);
        sorted[sorted.len().saturating_sub(n)..].to_vec()
    };
    let train = out.join("data/train_HR");
    let bench = out.join("data/DemoVal");
    for d in [&train, &bench.join("HR")] {
        std::fs::create_dir_all(d).map_err(|source| ExpertError::Io { path: d.to_path_buf(), source })?;
    }
    let (mut n_train, mut n_val) = (0, 0);
    for f in &files {
        let Some(name) = f.file_name() else { continue };
        let dst = if held.contains(&stem(f)) {
            n_val += 1;
            bench.join("HR").join(name)
        } else {
            n_train += 1;
            train.join(name)
        };
        std::fs::copy(f, &dst).map_err(|source| ExpertError::Io { path: dst.clone(), source })?;
    }
    if n_train == 0 || n_val == 0 {
        return Err(ExpertError::File {
            path: photos.to_path_buf(),
            what: format!("need at least two photos: some to train on and some to hold out ({held:?})"),
        });
    }
    let lr = lr_dir(&bench, scale);
    // Strict: a held-out photo that cannot be made into LR is an error, not a smaller benchmark.
    let (lr_written, _skipped) = srcache_ingest::write_lr_folder(&bench.join("HR"), scale, &lr, true, &|| {})
        .map_err(|e| image_error(&lr, "cannot write the held-out LR", e))?;
    Ok(HeldOutSplit { train, bench, held, n_train, n_val, lr_dir: lr, lr_written })
}

fn image_error(path: &Path, what: &str, e: srcache_ingest::IngestError) -> ExpertError {
    ExpertError::Image { path: path.to_path_buf(), what: what.into(), source: Some(Box::new(e)) }
}
