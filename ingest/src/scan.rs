//! Finding the images of a dataset, pairing HR with LR, and decoding them to RGB8.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{IngestError, Result, Skipped};

pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"];

/// Where the images are.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScanConfig {
    /// HR folder, searched recursively.
    pub hr_dir: PathBuf,
    /// Optional LR folder (DIV2K `0001x4.png` or same-name pairing). Without it, LR is generated.
    pub lr_dir: Option<PathBuf>,
    pub scale: u32,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig { hr_dir: PathBuf::new(), lr_dir: None, scale: 4 }
    }
}

/// One image of the dataset: its HR file, the paired LR file if any, and its stem (the id prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub stem: String,
    pub hr: PathBuf,
    pub lr: Option<PathBuf>,
}

/// The result of a scan: images in sorted (deterministic) order, and what could not be paired.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub images: Vec<ImageEntry>,
    pub unpaired: Vec<Skipped>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).map(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())).unwrap_or(false)
}

/// All image files under `dir`, recursively, sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| IngestError::ReadDir { path: d.clone(), source })?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn stem_of(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Scans the HR folder and pairs every image with its LR file (`<stem>x<scale>.*` or `<stem>.*`).
pub fn scan(cfg: &ScanConfig) -> Result<ScanReport> {
    if cfg.scale == 0 {
        return Err(IngestError::Config { what: "scale must be ≥ 1".into() });
    }
    let hr = list_images(&cfg.hr_dir)?;
    if hr.is_empty() {
        return Err(IngestError::NoImages { path: cfg.hr_dir.clone() });
    }
    let mut report = ScanReport::default();
    let lr_files = match &cfg.lr_dir {
        Some(d) => list_images(d)?,
        None => Vec::new(),
    };
    let lr_by_stem: std::collections::HashMap<String, PathBuf> =
        lr_files.iter().map(|p| (stem_of(p), p.clone())).collect();
    for path in hr {
        let stem = stem_of(&path);
        let lr = match &cfg.lr_dir {
            None => None,
            Some(lr_dir) => {
                let found = lr_by_stem.get(&format!("{stem}x{}", cfg.scale)).or_else(|| lr_by_stem.get(&stem));
                match found {
                    Some(p) => Some(p.clone()),
                    None => {
                        let e = IngestError::Unpaired { path: path.clone(), lr_dir: lr_dir.clone() };
                        report.unpaired.push(Skipped { path: path.clone(), reason: e.to_string() });
                        continue;
                    }
                }
            }
        };
        report.images.push(ImageEntry { stem, hr: path, lr });
    }
    Ok(report)
}

/// Decodes any supported file to RGB8. 16-bit samples are rounded to 8 bits (v·255/65535, the `image`
/// crate's conversion); grayscale is replicated to RGB; an alpha channel is dropped (the returned flag says so).
pub fn decode_rgb8(path: &Path) -> Result<(RgbImage, bool)> {
    let img = image::ImageReader::open(path)
        .map_err(|e| IngestError::Decode { path: path.to_path_buf(), reason: e.to_string() })?
        .with_guessed_format()
        .map_err(|e| IngestError::Decode { path: path.to_path_buf(), reason: e.to_string() })?
        .decode()
        .map_err(|e| IngestError::Decode { path: path.to_path_buf(), reason: e.to_string() })?;
    let had_alpha = img.color().has_alpha();
    Ok((img.into_rgb8(), had_alpha))
}

/// Decodes every file in parallel and drops the pixels: the decode-only baseline of `bench ingest`.
/// Returns how many decoded successfully.
pub fn decode_all(files: &[PathBuf]) -> usize {
    use rayon::prelude::*;
    files.par_iter().filter(|f| decode_rgb8(f).is_ok()).count()
}
