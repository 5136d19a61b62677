//! TorchScript export of a fusion model, so `infer` can run experts + fusion without this crate's Rust types.
//! Traced signature: forward(lr_up [B,3,H,W], sr_1..sr_E [B,3,H,W], feat_1..feat_F [B,C,h,w]) -> fused.

use crate::error::{Result, TorchCtx, TrainerError};
use crate::model::FusionNet;
use std::path::Path;
use tch::{CModule, Kind, Tensor};

/// `model`'s VarStore must be frozen (the trainer's EMA store is): the tracer refuses to bake tensors that
/// require grad into the graph as constants.
/// Traces `model` at a small example size (the traced graph is size-agnostic: convs, pixel-shuffle and
/// interpolation to the input's size) and saves it.
pub fn export(model: &FusionNet, feat_channels: &[usize], path: &Path) -> Result<()> {
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
