//! Experts (+ an optional trained fusion model) on full images of any size: the engine behind `eval`,
//! `infer` and the demo's final table. What the experts produce and how it is fed to the fusion model lives in
//! `srcache_trainer::fullimage`, shared with the trainer's full-image validation, so both report one number.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use srcache_cache::{Builtin, CacheConfig, Expert, ExpertSource};
use srcache_trainer::fullimage;
pub use srcache_trainer::fullimage::tensor_to_image;
use tch::{CModule, Device, Tensor};

use crate::tiling::Tiling;

/// Which experts (and fusion model) to run, where, and in what tiles: shared by `eval` and `infer`.
#[derive(clap::Args, Debug)]
pub struct StackArgs {
    /// Upscaling factor.
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Expert as NAME=builtin:KIND (bicubic, lanczos3, sharp_bicubic) or NAME=FILE.pt; repeatable.
    /// Default: the experts of --cache, else the three built-ins.
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    /// A cache directory whose cache.toml lists the experts.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// A training run directory (from `srcache train`) whose fusion.pt fuses the experts.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tile side in LR pixels for the experts (0 = whole image).
    #[arg(long, default_value_t = 192)]
    pub tile: i64,
    /// Tile overlap in LR pixels (blended linearly).
    #[arg(long, default_value_t = 16)]
    pub overlap: i64,
}

impl StackArgs {
    pub fn build(&self) -> Result<SrStack> {
        let devices = srcache_cache::parse_devices(&self.device).map_err(|e| anyhow::anyhow!("{e}"))?;
        let device = devices.first().copied().context("no device given")?;
        let experts = expert_list(&self.experts, self.cache.as_deref())?;
        let tile = if self.tile <= 0 { i64::MAX / 4 } else { self.tile };
        SrStack::new(self.scale, &experts, self.run.as_deref(), device, Tiling { tile, overlap: self.overlap })
    }
}

/// Parses `name=builtin:lanczos3` or `name=path/to/expert.pt`.
pub fn parse_expert(spec: &str) -> Result<(String, ExpertSource)> {
    let (name, src) = spec.split_once('=').with_context(|| format!("expert {spec:?}: expected NAME=builtin:KIND or NAME=FILE.pt"))?;
    let source = fullimage::parse_source(src).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((name.to_string(), source))
}

/// The expert list: from `--expert` specs, else from a cache directory's cache.toml, else the built-ins.
pub fn expert_list(specs: &[String], cache_dir: Option<&Path>) -> Result<Vec<(String, ExpertSource)>> {
    let mut list: Vec<(String, ExpertSource)> = if !specs.is_empty() {
        specs.iter().map(|s| parse_expert(s)).collect::<Result<_>>()?
    } else if let Some(dir) = cache_dir {
        let cfg = CacheConfig::from_toml_file(&dir.join("cache.toml")).with_context(|| format!("{}", dir.display()))?;
        cfg.experts
            .iter()
            .map(|e| e.source().map(|s| (e.name.clone(), s)).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<Result<_>>()?
    } else {
        Builtin::ALL.iter().map(|b| (b.as_str().to_string(), ExpertSource::Builtin(*b))).collect()
    };
    // The fusion model takes expert outputs in name order (the loader's order).
    list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(list)
}

/// A trained fusion model and what it expects.
pub struct Fusion {
    module: CModule,
    experts: Vec<String>,
    /// Per expert: whether the model takes its features.
    feats: Vec<bool>,
}

impl Fusion {
    /// Loads `run/fusion.pt` with the expert order and feature use recorded in `run/config.toml`.
    pub fn load(run: &Path, device: Device) -> Result<Fusion> {
        let cfg_path = run.join("config.toml");
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let cfg: srcache_trainer::TrainConfig =
            toml::from_str(&text).with_context(|| format!("{}: not a training config", cfg_path.display()))?;
        let pt = run.join("fusion.pt");
        let module = CModule::load_on_device(&pt, device).with_context(|| format!("{}: cannot load TorchScript", pt.display()))?;
        Ok(Fusion { module, feats: fullimage::wanted_feats(&cfg.model), experts: cfg.model.experts })
    }
}

/// Everything computed for one LR image.
pub struct Outputs {
    pub bicubic: RgbImage,
    pub experts: Vec<(String, RgbImage)>,
    pub fused: Option<RgbImage>,
}

pub struct SrStack {
    pub scale: u32,
    pub experts: Vec<Expert>,
    pub fusion: Option<Fusion>,
    pub tiling: Tiling,
    pub device: Device,
}

pub fn image_to_tensor(img: &RgbImage, device: Device) -> Result<Tensor> {
    Ok(fullimage::image_to_tensor(img, device)?)
}

impl SrStack {
    pub fn new(scale: u32, experts: &[(String, ExpertSource)], fusion_run: Option<&Path>, device: Device, tiling: Tiling) -> Result<Self> {
        let experts = experts
            .iter()
            .map(|(n, s)| Expert::load(n, s, scale, device).map_err(|e| anyhow::anyhow!("expert {n}: {e}")))
            .collect::<Result<Vec<_>>>()?;
        let fusion = fusion_run.map(|r| Fusion::load(r, device)).transpose()?;
        if let Some(f) = &fusion {
            let names: Vec<&str> = experts.iter().map(|e| e.name()).collect();
            if names != f.experts.iter().map(String::as_str).collect::<Vec<_>>() {
                bail!("the fusion model was trained on experts {:?}, but this run has {:?}", f.experts, names);
            }
        }
        Ok(SrStack { scale, experts, fusion, tiling, device })
    }

    pub fn run(&self, lr: &RgbImage) -> Result<Outputs> {
        let _g = tch::no_grad_guard();
        let x = image_to_tensor(lr, Device::Cpu)?;
        let bicubic = srcache_ingest::resize::bicubic_up(lr, self.scale);
        let want = self.fusion.as_ref().map(|f| f.feats.clone()).unwrap_or_default();
        let outs = fullimage::run_experts(&self.experts, &x, self.tiling, &want)?;
        let experts = self.experts.iter().zip(&outs.srs).map(|(e, sr)| Ok((e.name().to_string(), tensor_to_image(sr)?))).collect::<Result<Vec<_>>>()?;
        let fused = match &self.fusion {
            None => None,
            Some(f) => {
                let to = |t: &Tensor| t.f_to_device(self.device);
                let mut inputs: Vec<tch::IValue> = vec![tch::IValue::Tensor(to(&fullimage::lr_upsampled(&x, self.scale)?)?)];
                for t in outs.srs.iter().chain(&outs.feats) {
                    inputs.push(tch::IValue::Tensor(to(t)?));
                }
                let y = match f.module.forward_is(&inputs)? {
                    tch::IValue::Tensor(t) => t,
                    other => bail!("fusion model returned {other:?}, expected a tensor"),
                };
                Some(tensor_to_image(&y)?)
            }
        };
        Ok(Outputs { bicubic, experts, fused })
    }
}
