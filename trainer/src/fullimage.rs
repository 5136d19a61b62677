//! Experts and the fusion model on full images: the one place that decides what the fusion model is fed
//! outside training (torch-bicubic-upsampled LR, every expert's tiled sr in the model's expert order, and the
//! tiled features of the experts the model projects). Full-image validation and the CLI's `eval`, `infer` and
//! `demo` all go through here, so a number in val.json and the same number from `srcache eval` agree.

use crate::config::FusionConfig;
use crate::error::{Result, TorchCtx, TrainerError};
use crate::tiling::{run_tiled_multi, Tiling};
use image::RgbImage;
use srcache_cache::{Builtin, CacheError, Expert, ExpertSource};
use srcache_formats::Dataset;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Parses an expert source as the cache records it in the schema (`builtin:KIND` or a TorchScript path).
pub fn parse_source(src: &str) -> std::result::Result<ExpertSource, CacheError> {
    Ok(match src.strip_prefix("builtin:") {
        Some(kind) => ExpertSource::Builtin(kind.parse::<Builtin>()?),
        None => ExpertSource::TorchScript(PathBuf::from(src)),
    })
}

/// The sources of `names` from a cached dataset's schema attrs (`expert/<name>`). A relative TorchScript
/// path that does not exist from the working directory is looked up next to the dataset, then its parent.
pub fn sources_from_dataset(ds: &Dataset, names: &[String]) -> Result<Vec<(String, ExpertSource)>> {
    let bad = |why: String| TrainerError::Data { path: ds.dir().to_path_buf(), why };
    let attrs = &ds.schema().ok_or_else(|| bad("dataset has no shards".into()))?.attrs;
    names
        .iter()
        .map(|name| {
            let src = attrs.get(&format!("expert/{name}")).ok_or_else(|| {
                bad(format!("schema attrs have no expert/{name}: full-image validation needs the experts' sources (caches written by `srcache cache` record them)"))
            })?;
            let source = match parse_source(src).map_err(|source| TrainerError::Expert { name: name.clone(), source: Box::new(source) })? {
                ExpertSource::TorchScript(p) => ExpertSource::TorchScript(resolve(&p, ds.dir())),
                b => b,
            };
            Ok((name.clone(), source))
        })
        .collect()
}

fn resolve(p: &Path, data_dir: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    [Some(data_dir), data_dir.parent()].into_iter().flatten().map(|d| d.join(p)).find(|c| c.exists()).unwrap_or_else(|| p.to_path_buf())
}

/// Loads experts, probing each at `probe_hw`² (traced transformers accept only the size they were traced at).
pub fn load_experts(sources: &[(String, ExpertSource)], scale: u32, device: Device, probe_hw: usize) -> Result<Vec<Expert>> {
    sources
        .iter()
        .map(|(n, s)| Expert::load_probed(n, s, scale, device, probe_hw).map_err(|source| TrainerError::Expert { name: n.clone(), source: Box::new(source) }))
        .collect()
}

/// Which experts' features a fusion model takes (the model's own rule: `use_feats` and cached channels).
pub fn wanted_feats(cfg: &FusionConfig) -> Vec<bool> {
    (0..cfg.experts.len()).map(|i| cfg.use_feats && cfg.feat_channels.get(i).is_some_and(|&c| c > 0)).collect()
}

/// Everything the experts produce for one LR image, on the CPU in f32: `srs[i]` [1,3,sH,sW] clamped to [0,1],
/// and `feats` [1,C,h,w] for the experts flagged in `want_feat`, in expert order (the fusion model's inputs).
pub struct ExpertOutputs {
    pub srs: Vec<Tensor>,
    pub feats: Vec<Tensor>,
}

/// Runs every expert once over `lr` [1,3,H,W] in tiles (one pass gives sr and features together).
pub fn run_experts(experts: &[Expert], lr: &Tensor, tiling: Tiling, want_feat: &[bool]) -> Result<ExpertOutputs> {
    let _g = tch::no_grad_guard();
    let mut out = ExpertOutputs { srs: Vec::with_capacity(experts.len()), feats: Vec::new() };
    for (i, e) in experts.iter().enumerate() {
        let want = want_feat.get(i).copied().unwrap_or(false);
        if want && !e.has_feat() {
            return Err(TrainerError::Config { what: format!("expert {}", e.name()), why: "the fusion model expects its features, but it returns none".into() });
        }
        let input = lr.f_to_device(e.device()).ctx("lr to expert device")?;
        let mut parts = run_tiled_multi(&input, tiling, |t: &Tensor| -> Result<Vec<Tensor>> {
            let (sr, feat) = e.forward(t).map_err(|source| TrainerError::Expert { name: e.name().to_string(), source: Box::new(source) })?;
            Ok(match (want, feat) {
                (true, Some(f)) => vec![sr, f],
                _ => vec![sr],
            })
        })?;
        if want {
            out.feats.push(parts.pop().ok_or_else(|| TrainerError::Config { what: format!("expert {}", e.name()), why: "no features".into() })?);
        }
        let sr = parts.pop().ok_or_else(|| TrainerError::Config { what: format!("expert {}", e.name()), why: "no output".into() })?;
        // Blending clamped tiles stays in [0,1] up to rounding; clamp so every consumer sees the same image.
        out.srs.push(sr.f_clamp(0.0, 1.0).ctx("clamp sr")?);
    }
    Ok(out)
}

/// The fusion model's first input: PyTorch bicubic of the LR (what the loader's batches were fused from).
pub fn lr_upsampled(lr: &Tensor, scale: u32) -> Result<Tensor> {
    crate::ops::upsample_bicubic(&lr.f_to_device(Device::Cpu).ctx("lr to cpu")?.f_to_kind(Kind::Float).ctx("lr to f32")?, scale)
}

/// RGB8 → [1,3,H,W] f32 in [0,1] on `device`.
pub fn image_to_tensor(img: &RgbImage, device: Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let t = Tensor::f_from_slice(img.as_raw()).ctx("image to tensor")?.f_view([h as i64, w as i64, 3]).ctx("image view")?;
    t.f_permute([2, 0, 1])
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_div_scalar(255.0))
        .and_then(|t| t.f_unsqueeze(0))
        .and_then(|t| t.f_to_device(device))
        .ctx("image to tensor")
}

/// [1,3,H,W] (or [3,H,W]) in [0,1] → RGB8, clamped and rounded like BasicSR's tensor2img.
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let t = if t.dim() == 4 { t.f_squeeze_dim(0).ctx("squeeze")? } else { t.shallow_clone() };
    let (data, w, h) = crate::metrics::tensor_to_rgb8(&t)?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| TrainerError::Config { what: "image tensor".into(), why: format!("{w}x{h} does not match its data") })
}
