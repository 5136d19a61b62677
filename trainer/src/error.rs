use std::path::PathBuf;

/// Errors of the trainer; each names the file, tensor or step it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("torch error in {what}: {source}")]
    Torch { what: String, #[source] source: tch::TchError },
    #[error("io error on {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("format error: {source}")]
    Format { #[from] source: srcache_formats::FormatError },
    #[error("bad config {what}: {why}")]
    Config { what: String, why: String },
    #[error("dataset {path}: {why}")]
    Data { path: PathBuf, why: String },
    #[error("sample {sample} tensor {tensor}: {why}")]
    Sample { sample: u64, tensor: String, why: String },
    #[error("checkpoint {path}: {why}")]
    Checkpoint { path: PathBuf, why: String },
    #[error("image {path}: {why}")]
    Image { path: PathBuf, why: String },
    #[error("loader worker stopped: {why}")]
    Loader { why: String },
    /// Boxed: CacheError is large, and every trainer Result would carry its size.
    #[error("expert {name}: {source}")]
    Expert { name: String, #[source] source: Box<srcache_cache::CacheError> },
    #[error("metrics file {path}: {why}")]
    Metrics { path: PathBuf, why: String },
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;

/// Attaches context to tch errors without a panic path.
pub trait TorchCtx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> TorchCtx<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|source| TrainerError::Torch { what: what.to_string(), source })
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainerError {
    let path = path.into();
    move |source| TrainerError::Io { path, source }
}

impl From<tch::TchError> for TrainerError {
    fn from(source: tch::TchError) -> Self {
        TrainerError::Torch { what: "tensor op".into(), source }
    }
}
