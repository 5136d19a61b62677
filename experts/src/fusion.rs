//! Trained fusion models at inference: the TorchScript `fusion.pt` a training run exports, with the expert
//! order and feature use it was trained on. The [`Fuser`] trait is what full-image evaluation calls, so the
//! trainer's live model (during validation) and an exported one (in `eval`/`infer`) are fed identically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, IValue, Tensor};

use crate::error::{torch, ExpertError, Result, TorchFailure};

/// What a fusion model takes: the experts in order (sorted by name, the loader's order), which of them it
/// takes features from, and the scale. Written next to `fusion.pt` as `fusion.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FusionSpec {
    pub experts: Vec<String>,
    /// Feature channels per expert (0 = none cached).
    pub feat_channels: Vec<usize>,
    pub use_feats: bool,
    pub scale: u32,
}

impl FusionSpec {
    pub const FILE: &'static str = "fusion.json";

    /// Per expert: whether the model takes its features.
    pub fn wants_feat(&self) -> Vec<bool> {
        (0..self.experts.len()).map(|i| self.use_feats && self.feat_channels.get(i).is_some_and(|&c| c > 0)).collect()
    }

    /// Reads `run/fusion.json`, or for runs exported before it existed the `[model]` table of `run/config.toml`.
    pub fn read(run: &Path) -> Result<FusionSpec> {
        let json = run.join(Self::FILE);
        if json.exists() {
            let text = srcache_formats::read_regular(&json).map_err(|source| ExpertError::Io { path: json.clone(), source })?;
            return serde_json::from_slice(&text).map_err(|e| ExpertError::Fusion { path: json, what: format!("not a fusion spec: {e}") });
        }
        let cfg = run.join("config.toml");
        let text = srcache_formats::read_regular_to_string(&cfg).map_err(|source| ExpertError::Io { path: cfg.clone(), source })?;
        #[derive(Deserialize)]
        struct Run {
            model: FusionSpec,
        }
        toml::from_str::<Run>(&text).map(|r| r.model).map_err(|e| ExpertError::Fusion {
            path: cfg,
            what: format!("no [model] experts/feat_channels/use_feats/scale: {}", crate::toml_error(&text, &e)),
        })
    }
}

/// Anything that fuses expert outputs: `fuse(lr_up [B,3,H,W], srs [B,3,H,W]…, feats [B,C,h,w]…)`.
pub trait Fuser {
    fn spec(&self) -> &FusionSpec;
    fn device(&self) -> Device;
    fn fuse(&self, lr_up: &Tensor, srs: &[Tensor], feats: &[Tensor]) -> Result<Tensor>;
}

/// An exported fusion model (`run/fusion.pt`).
pub struct FusionModule {
    module: CModule,
    spec: FusionSpec,
    device: Device,
    path: PathBuf,
}

impl FusionModule {
    pub fn load(run: &Path, device: Device) -> Result<FusionModule> {
        let spec = FusionSpec::read(run)?;
        let path = run.join("fusion.pt");
        if !path.is_file() {
            return Err(ExpertError::Fusion { path, what: "not found (was the run trained with export = true?)".into() });
        }
        let mut module = CModule::load_on_device(&path, device).map_err(|e| ExpertError::Script {
            name: "fusion".into(),
            path: path.clone(),
            source: TorchFailure::from(e),
        })?;
        module.set_eval();
        Ok(FusionModule { module, spec, device, path })
    }
}

impl Fuser for FusionModule {
    fn spec(&self) -> &FusionSpec {
        &self.spec
    }

    fn device(&self) -> Device {
        self.device
    }

    fn fuse(&self, lr_up: &Tensor, srs: &[Tensor], feats: &[Tensor]) -> Result<Tensor> {
        let to = |t: &Tensor| t.f_to_device(self.device).map(IValue::Tensor).map_err(torch("fusion input to device"));
        let mut inputs = vec![to(lr_up)?];
        for t in srs.iter().chain(feats) {
            inputs.push(to(t)?);
        }
        match self
            .module
            .forward_is(&inputs)
            .map_err(|e| ExpertError::Torch { context: format!("fusion model {}", self.path.display()), source: TorchFailure::from(e) })?
        {
            IValue::Tensor(t) => Ok(t),
            _ => Err(ExpertError::Fusion { path: self.path.clone(), what: "returned something other than a tensor".into() }),
        }
    }
}
