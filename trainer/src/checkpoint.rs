//! Checkpoints: `<run>/ckpt/step-NNNNNNNN/` holding model.safetensors, ema.safetensors, optim.safetensors (AdamW
//! moments) and state.json. A checkpoint is built in a `.tmp-*` directory and renamed into place, and `latest`
//! is replaced by rename, so a crash never leaves a half-written checkpoint that `--resume` would pick up.

use crate::config::TrainConfig;
use crate::error::{io_err, Result, TorchCtx, TrainerError};
use crate::loader::LoaderPosition;
use crate::optim::{AdamW, LossScaler};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub adam_t: u64,
    pub loader: LoaderPosition,
    pub scaler: LossScaler,
    pub config: TrainConfig,
    pub val_psnr: Option<f64>,
    /// (step, validation PSNR) of the checkpoints kept as best.
    pub best: Vec<(u64, f64)>,
}

pub fn ckpt_root(run: &Path) -> PathBuf {
    run.join("ckpt")
}

pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    ckpt_root(run).join(format!("step-{step:08}"))
}

pub fn save(run: &Path, state: &TrainState, vs: &VarStore, ema: &VarStore, opt: &AdamW) -> Result<PathBuf> {
    let root = ckpt_root(run);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let final_dir = step_dir(run, state.step);
    let tmp = root.join(format!(".tmp-step-{:08}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    vs.save(tmp.join("model.safetensors")).ctx("save model")?;
    ema.save(tmp.join("ema.safetensors")).ctx("save ema")?;
    let moments = opt.state_tensors();
    Tensor::write_safetensors(&moments, tmp.join("optim.safetensors")).ctx("save optimizer")?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainerError::Checkpoint { path: tmp.clone(), why: e.to_string() })?;
    srcache_formats::write_atomic(&tmp.join("state.json"), &json)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
    srcache_formats::write_atomic(
        &root.join("latest"),
        final_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes(),
    )?;
    Ok(final_dir)
}

/// The checkpoint `latest` points at, if any.
pub fn latest(run: &Path) -> Result<Option<PathBuf>> {
    let p = ckpt_root(run).join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name = srcache_formats::read_regular_to_string(&p).map_err(io_err(&p))?;
    let dir = ckpt_root(run).join(name.trim());
    if !dir.join("state.json").exists() {
        return Err(TrainerError::Checkpoint { path: dir, why: "latest points at a checkpoint without state.json".into() });
    }
    Ok(Some(dir))
}

pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let bytes = srcache_formats::read_regular(&p).map_err(io_err(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| TrainerError::Checkpoint { path: p, why: e.to_string() })
}

/// Restores weights, EMA and optimizer moments in place.
pub fn load_into(dir: &Path, state: &TrainState, vs: &mut VarStore, ema: &mut VarStore, opt: &mut AdamW) -> Result<()> {
    vs.load(dir.join("model.safetensors")).ctx("load model")?;
    ema.load(dir.join("ema.safetensors")).ctx("load ema")?;
    let moments = Tensor::read_safetensors(dir.join("optim.safetensors")).ctx("load optimizer")?;
    opt.load_state(moments, state.adam_t)
}

/// Deletes every step checkpoint that is neither `keep_step` (the newest) nor among `best`.
pub fn prune(run: &Path, best: &[(u64, f64)], keep_step: u64) -> Result<()> {
    let root = ckpt_root(run);
    let rd = std::fs::read_dir(&root).map_err(io_err(&root))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) else { continue };
        if step != keep_step && !best.iter().any(|(s, _)| *s == step) {
            std::fs::remove_dir_all(e.path()).map_err(io_err(e.path()))?;
        }
    }
    Ok(())
}

/// Inserts (step, psnr) into the best-k list (descending PSNR).
pub fn update_best(best: &mut Vec<(u64, f64)>, step: u64, psnr: f64, k: usize) {
    best.retain(|(s, _)| *s != step);
    best.push((step, psnr));
    best.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    best.truncate(k.max(1));
}
