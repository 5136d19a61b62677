use std::path::PathBuf;

/// What went wrong in ingest; every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: cannot read directory: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("{path}: no images found (looked for png, jpg, jpeg, webp, bmp, tif, tiff)")]
    NoImages { path: PathBuf },
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: {width}x{height} is smaller than one {patch}x{patch} LR patch at scale {scale}")]
    TooSmall { path: PathBuf, width: u32, height: u32, patch: u32, scale: u32 },
    #[error("{path}: LR is {got_w}x{got_h}, expected {want_w}x{want_h} (HR {hr} / scale {scale})")]
    LrSize { path: PathBuf, hr: PathBuf, got_w: u32, got_h: u32, want_w: u32, want_h: u32, scale: u32 },
    #[error("{path}: no LR image paired with this HR image in {lr_dir}")]
    Unpaired { path: PathBuf, lr_dir: PathBuf },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("bad ingest configuration: {what}")]
    Config { what: String },
}

pub type Result<T> = std::result::Result<T, IngestError>;

/// A file the run skipped, and why (reported at the end, and in the manifest's skipped list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}
