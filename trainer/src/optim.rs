//! AdamW, EMA, LR schedule and dynamic loss scaling, written over the VarStore's named tensors so that every
//! piece of optimizer state can be checkpointed and restored bit-exactly (tch's optimizers hide theirs).

use crate::config::OptimConfig;
use crate::error::{Result, TorchCtx, TrainerError};
use std::collections::HashMap;
use tch::{nn::VarStore, Kind, Tensor};

/// Trainable variables of `vs`, sorted by name so every run (and every resume) visits them in one order.
pub fn named_params(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub struct AdamW {
    pub cfg: OptimConfig,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of optimizer updates applied (bias correction uses it).
    pub t: u64,
}

impl AdamW {
    pub fn new(vs: &VarStore, cfg: &OptimConfig) -> Result<Self> {
        let params = named_params(vs);
        let m = params.iter().map(|(_, p)| p.f_zeros_like().ctx("adam m")).collect::<Result<_>>()?;
        let v = params.iter().map(|(_, p)| p.f_zeros_like().ctx("adam v")).collect::<Result<_>>()?;
        Ok(Self { cfg: cfg.clone(), params, m, v, t: 0 })
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_detach_()?.f_zero_().ctx("zero_grad")?;
            }
        }
        Ok(())
    }

    /// Multiplies every gradient by `f` (loss-scale removal, accumulation averaging).
    pub fn scale_grads(&mut self, f: f64) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_mul_scalar_(f).ctx("scale grads")?;
            }
        }
        Ok(())
    }

    /// Global L2 norm of all gradients (NaN/inf propagate, so the loss scaler can detect overflow).
    pub fn grad_norm(&self) -> Result<f64> {
        let mut sq = 0.0f64;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                let n = g.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[]).ctx("grad norm")?;
                sq += n;
            }
        }
        Ok(sq.sqrt())
    }

    /// clip_grad_norm over all parameters; returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let n = self.grad_norm()?;
        if max_norm > 0.0 && n.is_finite() && n > max_norm {
            self.scale_grads(max_norm / (n + 1e-6))?;
        }
        Ok(n)
    }

    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let _guard = tch::no_grad_guard();
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let m = &mut self.m[i];
            let v = &mut self.v[i];
            let _ = m.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?).ctx("adam m")?;
            let _ = v.f_mul_scalar_(b2)?.f_add_(&g.f_square()?.f_mul_scalar(1.0 - b2)?).ctx("adam v")?;
            // Decoupled weight decay (AdamW): shrink the weights, then the Adam update.
            if self.cfg.weight_decay > 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * self.cfg.weight_decay).ctx("weight decay")?;
            }
            let denom = v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(self.cfg.eps)?;
            let upd = m.f_div_scalar(bc1)?.f_div(&denom)?.f_mul_scalar(lr)?;
            let _ = p.f_sub_(&upd).ctx("adam update")?;
        }
        Ok(())
    }

    /// Moments as named tensors for a safetensors file (`m.<var>`, `v.<var>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, t: u64) -> Result<()> {
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        let _guard = tch::no_grad_guard();
        for (i, (name, _)) in self.params.iter().enumerate() {
            for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let src =
                    map.get(&key).ok_or_else(|| TrainerError::Checkpoint { path: "optim.safetensors".into(), why: format!("missing {key}") })?;
                dst.f_copy_(src).ctx("load adam state")?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Linear warm-up then cosine decay to `min_lr` at `total` steps. `step` counts from 0.
pub fn lr_at(cfg: &OptimConfig, step: u64, total: u64) -> f64 {
    if cfg.warmup_steps > 0 && step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let p = ((step - cfg.warmup_steps.min(step)) as f64 / span).min(1.0);
    cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Exponential moving average of the weights, kept in a second VarStore of the same model so it can be
/// evaluated, saved and exported like the live one.
pub fn ema_update(ema: &VarStore, live: &VarStore, decay: f64) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let src = live.variables();
    for (name, mut dst) in ema.variables() {
        if let Some(s) = src.get(&name) {
            let _ = dst.f_mul_scalar_(decay)?.f_add_(&s.f_mul_scalar(1.0 - decay)?).ctx("ema")?;
        }
    }
    Ok(())
}

/// Dynamic loss scaling for fp16 autocast (CUDA only): halve on overflow and skip the step, grow after
/// `interval` clean steps. On CPU the scale stays 1 and nothing is ever skipped.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub good_steps: u64,
    pub interval: u64,
}

impl LossScaler {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, scale: if enabled { 65536.0 } else { 1.0 }, good_steps: 0, interval: 2000 }
    }
    /// Call with the unscaled gradient norm; returns false when the step must be skipped.
    pub fn update(&mut self, grad_norm: f64) -> bool {
        if !self.enabled {
            return true;
        }
        if !grad_norm.is_finite() {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}
