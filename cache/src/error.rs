//! Errors of the cache stage. Every variant names what it is about (expert, file, sample).

use std::path::PathBuf;

use thiserror::Error;

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("expert {name}: cannot load {path}: {reason}")]
    ExpertLoad { name: String, path: PathBuf, reason: String },
    #[error("expert {name}: {source_desc} upscales by {got}x but the run's scale is {expected}x")]
    ScaleMismatch { name: String, source_desc: String, expected: u32, got: u32 },
    #[error("expert {name}: {what}")]
    Expert { name: String, what: String },
    #[error("torch error in {context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
    #[error("config: {what}")]
    Config { what: String },
    #[error("{path}: {what}")]
    ConfigFile { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] srcache_formats::FormatError),
    #[error("ingest: {what}")]
    Ingest { what: String },
    #[error("sample {sample}: {what}")]
    Sample { sample: String, what: String },
    #[error("pipeline: {what}")]
    Pipeline { what: String },
}

impl CacheError {
    /// Whether this is a CUDA out-of-memory error (libtorch reports it only as text).
    pub fn is_oom(&self) -> bool {
        match self {
            CacheError::Torch { source, .. } => {
                let s = source.to_string();
                s.contains("out of memory") || s.contains("CUDA_ERROR_OUT_OF_MEMORY")
            }
            _ => false,
        }
    }
}

/// `map_err` helper: wraps a TchError with context.
pub(crate) fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> CacheError {
    let context = context.into();
    move |source| CacheError::Torch { context, source }
}
