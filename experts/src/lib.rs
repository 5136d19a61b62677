//! srcache-experts: the frozen super-resolution experts and everything that runs them outside the cache
//! pipeline's batches.
//!
//! - [`Expert`]: an AOTInductor package (`.pt2`), a TorchScript file or a [`Builtin`] upscaler behind one
//!   contract, probed at the size it runs at; [`ExpertMeta`]: what an exported file says about its sizes;
//! - [`ExpertSource`] / [`ExpertSpec`]: the one spelling of `builtin:NAME` / a path (`NAME=SOURCE[@DEVICE]`);
//! - [`parse_devices`]: the one device parser (`cpu`, `cpu:N`, `cuda:I`, lists, `auto`), strict;
//! - [`SrStack`] + [`tiling`]: experts over full images of any size, tiled with overlap blending;
//! - [`fusion`]: trained fusion models for inference, behind the [`Fuser`] trait the trainer also implements;
//! - [`baselines`]: the rows a fusion model must beat (expert average, ×8 self-ensemble, least-squares blend,
//!   the oracle bound);
//! - [`benchmark`] + [`evaluate`]: benchmark folders and PSNR/SSIM tables, shared by `eval`, `infer`, the demo
//!   and the trainer's full-image validation, so all of them report the same numbers.

mod aoti;
pub mod baselines;
pub mod benchmark;
mod builtin;
pub mod device;
pub mod error;
pub mod evaluate;
mod expert;
pub mod fusion;
pub mod image;
pub mod meta;
pub mod pca;
mod source;
pub mod stack;
pub mod tiling;

pub use device::{device_name, parse_device, parse_devices};
pub use error::{summarize, toml_error, torch, ExpertError, Result, TorchFailure};
pub use expert::{check_size, Expert, Probe};
pub use fusion::{Fuser, FusionModule, FusionSpec};
pub use meta::{read_meta, ExpertMeta, ModelFormat};
pub use source::{check_name, sources_from_dataset, Builtin, ExpertSource, ExpertSpec};
pub use stack::{ExpertOutputs, SrStack, StackExpert};
pub use tiling::Tiling;
