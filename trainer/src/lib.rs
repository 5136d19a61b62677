//! srcache-trainer: trains a small fusion network on cached expert outputs.
//!
//! Everything here is built for exact reproducibility: the optimizer is a hand-written AdamW over the
//! VarStore's tensors (tch's optimizers cannot export their moments), the loader derives every random choice
//! from `(seed, epoch, position)`, and checkpoints carry all of it, so a resumed run replays the same curve.

pub mod checkpoint;
pub mod config;
mod dihedral;
pub mod error;
pub mod export;
pub mod loader;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod tensorboard;
pub mod train;
pub mod val_sheet;
pub mod validate;

pub use config::{FusionConfig, Head, LoaderConfig, LossConfig, LossWeights, TrainConfig};
pub use error::{Result, TrainerError};
pub use loader::{Aug, Batch, Loader, LoaderPosition};
pub use model::FusionNet;
pub use train::{train, TrainSummary};
