//! Experts (+ an optional trained fusion model) on full images of any size: the engine behind `eval`,
//! `infer` and the demo's final table. Experts run tiled with overlap blending; the fusion model gets exactly
//! the inputs it was trained on (torch-bicubic-upsampled LR, every expert's SR in name order, features).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use srcache_cache::{Builtin, CacheConfig, Expert, ExpertSource};
use tch::{CModule, Device, Kind, Tensor};

use crate::tiling::{run_tiled, Tiling};

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
    let source = match src.strip_prefix("builtin:") {
        Some(kind) => ExpertSource::Builtin(kind.parse::<Builtin>().map_err(|e| anyhow::anyhow!("{e}"))?),
        None => ExpertSource::TorchScript(PathBuf::from(src)),
    };
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
    feats: bool,
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
        let feats = cfg.model.use_feats && cfg.model.feat_channels.iter().any(|&c| c > 0);
        Ok(Fusion { module, experts: cfg.model.experts, feats })
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
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw()).f_view([h as i64, w as i64, 3])?.f_permute([2, 0, 1])?;
    Ok(t.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?.f_unsqueeze(0)?.f_to_device(device)?)
}

/// [1,3,H,W] in [0,1] → RGB8, rounded like BasicSR's tensor2img.
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let t = t.f_squeeze_dim(0)?.f_to_device(Device::Cpu)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?.f_round()?;
    let t = t.f_to_kind(Kind::Uint8)?.f_permute([1, 2, 0])?.f_contiguous()?;
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    let mut buf = vec![0u8; (h * w * 3) as usize];
    let n = buf.len();
    t.f_copy_data_u8(&mut buf, n)?;
    RgbImage::from_raw(w, h, buf).context("tensor has the wrong size for an RGB image")
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
        let s = self.scale as i64;
        let x = image_to_tensor(lr, self.device)?;
        let bicubic = srcache_ingest::resize::bicubic_up(lr, self.scale);
        let mut srs = Vec::new();
        let mut feats = Vec::new();
        let mut out = Vec::new();
        for e in &self.experts {
            let sr = run_tiled(&x, s, self.tiling, |t| e.forward(t).map(|(sr, _)| sr).map_err(|err| tch::TchError::Torch(err.to_string())))?;
            let sr = sr.f_clamp(0.0, 1.0)?;
            if self.fusion.as_ref().is_some_and(|f| f.feats) && e.has_feat() {
                // Features are small (LR resolution): one whole-image pass gives them without seams.
                if let (_, Some(f)) = e.forward(&x).map_err(|err| anyhow::anyhow!("{}: {err}", e.name()))? {
                    feats.push(f.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?);
                }
            }
            out.push((e.name().to_string(), tensor_to_image(&sr)?));
            srs.push(sr);
        }
        let fused = match &self.fusion {
            None => None,
            Some(f) => {
                let lr_up = srcache_trainer::ops::upsample_bicubic(&x.f_to_device(Device::Cpu)?, self.scale)?;
                let mut inputs: Vec<tch::IValue> = vec![tch::IValue::Tensor(lr_up)];
                inputs.extend(srs.iter().map(|t| tch::IValue::Tensor(t.shallow_clone())));
                inputs.extend(feats.into_iter().map(tch::IValue::Tensor));
                let y = match f.module.forward_is(&inputs)? {
                    tch::IValue::Tensor(t) => t,
                    other => bail!("fusion model returned {other:?}, expected a tensor"),
                };
                Some(tensor_to_image(&y)?)
            }
        };
        Ok(Outputs { bicubic, experts: out, fused })
    }
}
