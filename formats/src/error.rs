//! Errors name the file, the sample and the tensor they concern, so a user can find the bad bytes.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: I/O error while {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

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

    #[error("{path}: sample {sample}, tensor {tensor:?}: cannot decode {codec}")]
    Decode {
        path: PathBuf,
        sample: usize,
        tensor: String,
        codec: String,
        #[source]
        source: CodecError,
    },

    #[error("{path}: {what}")]
    NotADataset { path: PathBuf, what: String },

    #[error("{path}: changed on disk while being read ({what}); shards must not change while in use: run `srcache verify` on the dataset")]
    Changed { path: PathBuf, what: String },

    #[error("{path}: sample {sample}, tensor {tensor:?}: cannot allocate {bytes} bytes")]
    Alloc { path: PathBuf, sample: usize, tensor: String, bytes: u64 },

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

    #[error("{path}: cannot export: {what}")]
    Export { path: PathBuf, what: String },

    #[error("invalid input: {what}")]
    InvalidInput { what: String },

    /// An output folder not claimed or not removed ([`crate::Ownership`]).
    #[error(transparent)]
    Owned(#[from] crate::OwnedError),
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), what, source }
    }
}

/// Why a stored payload does not decode (the shard layer adds which shard, sample and tensor).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("output buffer is {got} bytes, the tensor needs {want}")]
    OutputSize { got: usize, want: usize },
    #[error("raw payload is {got} bytes, expected {want}")]
    RawSize { got: usize, want: usize },
    #[error("zstd frame does not decompress")]
    Zstd {
        #[source]
        source: std::io::Error,
    },
    #[error("zstd frame holds {got} bytes, expected {want}")]
    ZstdSize { got: usize, want: usize },
    #[error("affine_u8 payload is {got} bytes, expected {want}")]
    AffineSize { got: usize, want: usize },
    #[error("affine_u8 on integer dtype {dtype}")]
    AffineDtype { dtype: crate::DType },
    #[error("cannot allocate {bytes} bytes")]
    Alloc { bytes: usize },
    #[error("residual_u8 needs the same sample's decoded lr as its base (decode it through the Shard, or call decode_payload_with_base)")]
    NeedsBase,
    #[error("residual_u8 base is {got} bytes: not an lr [3, h, w] that a whole scale s maps to {shape:?} = [3, s·h, s·w]")]
    BaseSize { got: usize, shape: Vec<usize> },
    #[error("its base lr is unreadable: {what}")]
    BaseUnreadable { what: String },
}

/// An error and its causes on one line ("a: b: c"), for messages that are stored or listed rather than
/// returned (skipped-file lists, verify problems).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
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
