//! TorchScript export of a fusion model, so `infer` can run experts + fusion without this crate's Rust types.
//! Traced signature: forward(lr_up [B,3,H,W], sr_1..sr_E [B,3,H,W], feat_1..feat_F [B,C,h,w]) -> fused.

use crate::error::{Result, TorchCtx, TrainerError};
use crate::model::FusionNet;
use std::path::Path;
use tch::nn::VarStore;
use tch::{CModule, Kind, Tensor};

/// `model`'s VarStore must be frozen (the trainer's EMA store is): the tracer refuses to bake tensors that
/// require grad into the graph as constants.
/// Traces `model` at a small example size (the traced graph is size-agnostic: convs, pixel-shuffle and
/// interpolation to the input's size) and saves it.
///
/// A model trained on PCA coefficients of an expert's features (a cache with `feat_pca`) is exported with the
/// basis folded into its first layer on those features (a 1×1 projection: W·(P·(f − mean)) = (W·P)·f − W·P·mean),
/// so the exported model takes the experts' full feature maps and inference needs no basis.
pub fn export(model: &FusionNet, vs: &VarStore, feat_channels: &[usize], path: &Path) -> Result<()> {
    if model.cfg.feat_pca.iter().any(Option::is_some) {
        let (_vs, folded, channels) = fold_pca(model, vs, feat_channels)?;
        return trace(&folded, &channels, path);
    }
    trace(model, feat_channels, path)
}

/// A copy of `model` whose feature projections take full feature maps instead of PCA coefficients.
fn fold_pca(model: &FusionNet, vs: &VarStore, feat_channels: &[usize]) -> Result<(VarStore, FusionNet, Vec<usize>)> {
    let mut cfg = model.cfg.clone();
    let mut channels = feat_channels.to_vec();
    for (i, b) in model.cfg.feat_pca.iter().enumerate() {
        if let (Some(b), Some(c)) = (b, channels.get_mut(i)) {
            *c = b.channels;
        }
    }
    cfg.feat_channels = channels.clone();
    cfg.feat_pca = vec![None; cfg.feat_pca.len()];
    let mut vs2 = VarStore::new(tch::Device::Cpu);
    let folded = FusionNet::new(&vs2.root(), &cfg)?;
    let src = vs.variables();
    let _g = tch::no_grad_guard();
    let get = |name: &str| -> Result<Tensor> {
        src.get(name)
            .map(|t| t.to_device(tch::Device::Cpu).to_kind(Kind::Float))
            .ok_or_else(|| TrainerError::Config { what: "export".into(), why: format!("the trained model has no variable {name}") })
    };
    for (name, mut dst) in vs2.variables() {
        let feat = name.strip_prefix("trunk.feat").and_then(|r| r.split_once('.')).and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)));
        let basis = feat.and_then(|(i, _)| model.cfg.feat_pca.get(i)?.as_ref().map(|b| (i, b)));
        let value = match (feat, basis) {
            (Some((_, part)), Some((i, b))) => {
                let (k, c) = (b.k as i64, b.channels as i64);
                let w = get(&format!("trunk.feat{i}.weight"))?;
                let o = w.size()[0];
                let w = w.f_reshape([o, k]).ctx("fold weight")?;
                let p = Tensor::f_from_slice(&b.components).and_then(|t| t.f_reshape([k, c])).ctx("basis")?;
                let mean = Tensor::f_from_slice(&b.mean).and_then(|t| t.f_reshape([c, 1])).ctx("basis mean")?;
                match part {
                    "weight" => w.f_matmul(&p).and_then(|t| t.f_reshape([o, c, 1, 1])).ctx("fold weight")?,
                    "bias" => {
                        get(&name)?.f_sub(&w.f_matmul(&p.f_matmul(&mean).ctx("fold")?).ctx("fold")?.f_reshape([o]).ctx("fold")?).ctx("fold bias")?
                    }
                    _ => get(&name)?,
                }
            }
            _ => get(&name)?,
        };
        dst.f_copy_(&value).ctx("copy variable for export")?;
    }
    vs2.freeze();
    Ok((vs2, folded, channels))
}

fn trace(model: &FusionNet, feat_channels: &[usize], path: &Path) -> Result<()> {
    let s = model.cfg.scale as i64;
    let h = 16i64;
    let opts = (Kind::Float, tch::Device::Cpu);
    let mut inputs = vec![Tensor::f_rand([1, 3, h * s, h * s], opts).ctx("example")?];
    for _ in &model.cfg.experts {
        inputs.push(Tensor::f_rand([1, 3, h * s, h * s], opts).ctx("example")?);
    }
    if model.cfg.use_feats {
        for &c in feat_channels.iter().filter(|c| **c > 0) {
            inputs.push(Tensor::f_rand([1, c as i64, h, h], opts).ctx("example")?);
        }
    }
    let e = model.cfg.experts.len();
    let mut err: Option<TrainerError> = None;
    let mut f = |xs: &[Tensor]| -> Vec<Tensor> {
        match model.forward(&xs[0], &xs[1..1 + e], &xs[1 + e..]) {
            Ok(t) => vec![t],
            Err(e) => {
                err = Some(e);
                vec![xs[0].shallow_clone()]
            }
        }
    };
    let _g = tch::no_grad_guard();
    let m = CModule::create_by_tracing("FusionNet", "forward", &inputs, &mut f);
    if let Some(e) = err {
        return Err(e);
    }
    let m = m.ctx("trace fusion")?;
    // Saved under a temporary name and renamed, like every file srcache writes; the spec goes next to it.
    let tmp = srcache_formats::atomic::tmp_path(path);
    m.save(&tmp).ctx("save torchscript")?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(crate::error::io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))?;
    let mut spec = crate::model::spec_of(&model.cfg);
    spec.feat_channels = feat_channels.to_vec();
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| TrainerError::Config { what: "fusion spec".into(), why: e.to_string() })?;
    let spec_path = path.with_file_name(srcache_experts::FusionSpec::FILE);
    srcache_formats::write_atomic(&spec_path, &json)?;
    Ok(())
}
