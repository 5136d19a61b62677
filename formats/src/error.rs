//! Errors name the file, the sample and the tensor they concern, so a user can find the bad bytes.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: I/O error while {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },

    #[error("{path}: truncated: {what} needs {need} bytes, file has {have}")]
    Truncated { path: PathBuf, what: &'static str, need: u64, have: u64 },

    #[error("{path}: bad magic {found:02x?} in {what}: not an srcache shard")]
    BadMagic { path: PathBuf, what: &'static str, found: Vec<u8> },

    #[error("{path}: unsupported shard format version {version} (this build reads {supported})")]
    UnsupportedVersion { path: PathBuf, version: u32, supported: u32 },

    #[error("{path}: checksum mismatch in {region}: stored {expected:016x}, computed {actual:016x}")]
    RegionChecksum { path: PathBuf, region: &'static str, expected: u64, actual: u64 },

    #[error("{path}: sample {sample}, tensor {tensor:?}: payload checksum mismatch: stored {expected:016x}, computed {actual:016x}")]
    PayloadChecksum { path: PathBuf, sample: usize, tensor: String, expected: u64, actual: u64 },

    #[error("{path}: corrupt {region}: {what}")]
    Corrupt { path: PathBuf, region: &'static str, what: String },

    #[error("{path}: sample {sample}, tensor {tensor:?}: corrupt index entry: {what}")]
    CorruptEntry { path: PathBuf, sample: usize, tensor: String, what: String },

    #[error("{path}: sample {sample}, tensor {tensor:?}: cannot decode {codec}: {what}")]
    Decode { path: PathBuf, sample: usize, tensor: String, codec: String, what: String },

    #[error("tensor {tensor:?}: cannot encode: {what}")]
    Encode { tensor: String, what: String },

    #[error("{path}: schema mismatch: {what}")]
    SchemaMismatch { path: PathBuf, what: String },

    #[error("{path}: no tensor named {name:?} (have: {have})")]
    UnknownTensor { path: PathBuf, name: String, have: String },

    #[error("{path}: sample {sample} out of range (shard has {len})")]
    SampleOutOfRange { path: PathBuf, sample: usize, len: usize },

    #[error("{path}: manifest: {what}")]
    Manifest { path: PathBuf, what: String },

    #[error("invalid input: {what}")]
    InvalidInput { what: String },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), what, source }
    }
}

/// One finding of `Shard::verify`: which shard, which sample and tensor (if any), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub shard: PathBuf,
    pub sample: Option<usize>,
    pub tensor: Option<String>,
    pub fault: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shard.display())?;
        if let Some(s) = self.sample {
            write!(f, ": sample {s}")?;
        }
        if let Some(t) = &self.tensor {
            write!(f, ", tensor {t:?}")?;
        }
        write!(f, ": {}", self.fault)
    }
}
