//! Errors of the cache stage. Every variant names what it is about (expert, file, sample); causes are kept
//! as `source`.

use std::path::PathBuf;

use srcache_experts::{ExpertError, TorchFailure};
use thiserror::Error;

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error(transparent)]
    Expert(Box<ExpertError>),
    #[error("{context}")]
    Torch {
        context: String,
        #[source]
        source: TorchFailure,
    },
    #[error("config: {what}")]
    Config { what: String },
    #[error("{path}: {what}")]
    ConfigFile { path: PathBuf, what: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(Box<srcache_formats::FormatError>),
    #[error(transparent)]
    Ingest(Box<srcache_ingest::IngestError>),
    #[error("sample {sample}: {what}")]
    Sample { sample: String, what: String },
    #[error("sample {sample}")]
    Encode {
        sample: String,
        #[source]
        source: Box<srcache_formats::FormatError>,
    },
    #[error("pipeline: {what}")]
    Pipeline { what: String },
    #[error("{out}: {what}")]
    Refused { out: PathBuf, what: String },
}

// Boxed: the source errors are large, and every Result of the pipeline's hot loops would carry their size.
impl From<ExpertError> for CacheError {
    fn from(e: ExpertError) -> Self {
        CacheError::Expert(Box::new(e))
    }
}

impl From<srcache_formats::FormatError> for CacheError {
    fn from(e: srcache_formats::FormatError) -> Self {
        CacheError::Format(Box::new(e))
    }
}

impl From<srcache_ingest::IngestError> for CacheError {
    fn from(e: srcache_ingest::IngestError) -> Self {
        CacheError::Ingest(Box::new(e))
    }
}

impl CacheError {
    /// Whether this is an out-of-memory error (libtorch reports it only as text).
    pub fn is_oom(&self) -> bool {
        match self {
            CacheError::Torch { source, .. } => source.is_oom(),
            CacheError::Expert(e) => e.is_oom(),
            _ => false,
        }
    }
}

/// `map_err` helper: wraps a TchError with context.
pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> CacheError {
    let context = context.into();
    move |e| CacheError::Torch { context, source: TorchFailure::from(e) }
}
