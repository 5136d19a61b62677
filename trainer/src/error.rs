use std::path::PathBuf;

/// Errors of the trainer; each names the file, tensor or step it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("{what}")]
    Torch {
        what: String,
        #[source]
        source: srcache_experts::TorchFailure,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] srcache_formats::FormatError),
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
    #[error(transparent)]
    Expert(#[from] srcache_experts::ExpertError),
    #[error("run directory {path}: {why}")]
    RunDir { path: PathBuf, why: String },
    #[error("metrics file {path}: {why}")]
    Metrics { path: PathBuf, why: String },
    /// The loss stopped being a number: training cannot recover, and a model trained on NaNs is not a model.
    #[error("training diverged at step {step}: {why}")]
    Diverged { step: u64, why: String },
}

pub type Result<T, E = TrainerError> = std::result::Result<T, E>;

/// Attaches context to tch errors without a panic path.
pub trait TorchCtx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> TorchCtx<T> for std::result::Result<T, tch::TchError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| TrainerError::Torch { what: what.to_string(), source: e.into() })
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainerError {
    let path = path.into();
    move |source| TrainerError::Io { path, source }
}

impl From<tch::TchError> for TrainerError {
    fn from(source: tch::TchError) -> Self {
        TrainerError::Torch { what: "tensor op".into(), source: source.into() }
    }
}
