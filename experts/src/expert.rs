//! Experts: frozen super-resolution models behind one contract,
//! `forward(lr f32[B,3,h,w] in [0,1]) -> sr f32[B,3,s·h,s·w]` or `(sr, feat)`.
//!
//! Two kinds: TorchScript files (exported by `python/export_expert.py` or anything else honouring the
//! contract) and the built-in analytic upscalers of [`crate::builtin`]. Each worker thread owns its own
//! [`Expert`] (one `CModule` per device and thread), so no locking.
//!
//! An expert is probed when it is loaded, at the input size it will be run at: traced transformer experts
//! (HAT, SwinIR, DAT) only accept the size they were traced at, and a probe at any other size would reject an
//! expert the run can use, or accept one it cannot.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::builtin::{builtin_forward, Filters};
use crate::error::{torch, ExpertError, Result, TorchFailure};
use crate::source::ExpertSource;

/// Output shapes of an expert for one input size (without the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub sr: Vec<usize>,
    pub feat: Option<Vec<usize>>,
}

enum Body {
    Script(CModule),
    Builtin { which: crate::Builtin, filters: Filters },
}

/// A loaded expert, bound to one device.
pub struct Expert {
    name: String,
    source: ExpertSource,
    scale: u32,
    device: Device,
    body: Body,
    has_feat: bool,
    /// The LR side it was probed at.
    probe_hw: usize,
}

impl Expert {
    /// Loads the expert on `device` and runs one probe batch of two `probe_hw`×`probe_hw` inputs: detects
    /// whether it returns `(sr, feat)` and checks that sr is `scale`× the input. Any problem is reported here,
    /// before a run starts. Use the size the expert will run at (the cache's patch, the inference tile).
    pub fn load(name: &str, source: &ExpertSource, scale: u32, device: Device, probe_hw: usize) -> Result<Expert> {
        if !(1..=8).contains(&scale) {
            return Err(ExpertError::BadOutput { name: name.into(), source_desc: source.to_string(), what: format!("scale {scale} outside 1..=8") });
        }
        if probe_hw == 0 {
            return Err(ExpertError::BadOutput { name: name.into(), source_desc: source.to_string(), what: "probe size 0".into() });
        }
        let body = match source {
            ExpertSource::Builtin(which) => Body::Builtin { which: *which, filters: Filters::new(scale, device)? },
            ExpertSource::TorchScript(path) => Body::Script(load_script(name, path, device)?),
        };
        let mut expert = Expert { name: name.to_string(), source: source.clone(), scale, device, body, has_feat: false, probe_hw };
        let _guard = tch::no_grad_guard();
        let hw = probe_hw as i64;
        let x = probe_input(2, hw, hw, device)?;
        let (sr, feat) = expert.forward_raw(&x)?;
        expert.has_feat = feat.is_some();
        expert.check_sr(&sr, 2, hw, hw)?;
        if let Some(f) = &feat {
            if f.dim() < 2 || f.size()[0] != 2 {
                return Err(expert.bad_output(format!("feat has shape {:?}, expected [B=2, C, ...]", f.size())));
            }
        }
        Ok(expert)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn source(&self) -> &ExpertSource {
        &self.source
    }
    pub fn scale(&self) -> u32 {
        self.scale
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn has_feat(&self) -> bool {
        self.has_feat
    }
    /// The LR side the expert was probed (and is known to run) at.
    pub fn probe_hw(&self) -> usize {
        self.probe_hw
    }

    /// Output shapes (no batch dim) for an `h`×`w` input, measured by running the expert once.
    pub fn probe(&self, h: usize, w: usize) -> Result<Probe> {
        let _guard = tch::no_grad_guard();
        let x = probe_input(1, h as i64, w as i64, self.device)?;
        let (sr, feat) = self.forward(&x)?;
        let dims = |t: &Tensor| t.size()[1..].iter().map(|&d| d as usize).collect::<Vec<_>>();
        Ok(Probe { sr: dims(&sr), feat: feat.as_ref().map(dims) })
    }

    /// Runs the expert. `lr`: f32 [B,3,h,w] in [0,1] on this expert's device. sr is clamped to [0,1] and
    /// returned as f32; feat keeps the model's values (cast to f32).
    pub fn forward(&self, lr: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let size = lr.size();
        if size.len() != 4 || size[1] != 3 {
            return Err(self.bad_output(format!("input must be [B,3,h,w], got {size:?}")));
        }
        let (sr, feat) = self.forward_raw(lr)?;
        self.check_sr(&sr, size[0], size[2], size[3])?;
        if self.has_feat != feat.is_some() {
            return Err(self.bad_output("returned a different output arity than at probe time".into()));
        }
        let ctx = |what: &str| format!("expert {}: {what}", self.name);
        let sr = sr.f_to_kind(Kind::Float).and_then(|t| t.f_clamp(0.0, 1.0)).map_err(torch(ctx("clamp sr")))?;
        let feat = match feat {
            Some(f) => Some(f.f_to_kind(Kind::Float).map_err(torch(ctx("cast feat")))?),
            None => None,
        };
        Ok((sr, feat))
    }

    fn forward_raw(&self, lr: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match &self.body {
            Body::Builtin { which, filters } => {
                builtin_forward(*which, filters, lr, self.scale).map_err(torch(format!("built-in expert {}", self.name)))
            }
            Body::Script(module) => {
                let out = module.forward_is(&[IValue::Tensor(lr.shallow_clone())]).map_err(|e| {
                    let failure = TorchFailure::from(e);
                    if failure.is_oom() {
                        return ExpertError::Torch { context: format!("expert {} ({})", self.name, self.source), source: failure };
                    }
                    let s = lr.size();
                    let hint = if s.get(2) != Some(&(self.probe_hw as i64)) || s.get(3) != Some(&(self.probe_hw as i64)) {
                        format!(
                            " (it was loaded at {0}x{0}; traced transformer experts only accept the size they were traced at: \
                             run it at that size, e.g. --tile {0})",
                            self.probe_hw
                        )
                    } else {
                        String::new()
                    };
                    ExpertError::InputSize {
                        name: self.name.clone(),
                        source_desc: self.source.to_string(),
                        h: s.get(2).copied().unwrap_or(0),
                        w: s.get(3).copied().unwrap_or(0),
                        hint,
                        source: failure,
                    }
                })?;
                match out {
                    IValue::Tensor(sr) => Ok((sr, None)),
                    IValue::Tuple(mut items) | IValue::GenericList(mut items) if items.len() == 2 => {
                        let feat = items.pop();
                        let sr = items.pop();
                        match (sr, feat) {
                            (Some(IValue::Tensor(sr)), Some(IValue::Tensor(feat))) => Ok((sr, Some(feat))),
                            _ => Err(self.bad_output("returned a pair that is not (Tensor, Tensor)".into())),
                        }
                    }
                    IValue::TensorList(mut ts) if ts.len() == 2 => {
                        let feat = ts.pop();
                        match (ts.pop(), feat) {
                            (Some(sr), Some(feat)) => Ok((sr, Some(feat))),
                            _ => Err(self.bad_output("unexpected tensor list".into())),
                        }
                    }
                    other => Err(self.bad_output(format!("returned {}, expected a Tensor or a (sr, feat) tuple", ivalue_kind(&other)))),
                }
            }
        }
    }

    fn check_sr(&self, sr: &Tensor, b: i64, h: i64, w: i64) -> Result<()> {
        let got = sr.size();
        let s = self.scale as i64;
        if got.len() == 4 && got[0] == b && got[1] == 3 && got[2] == s * h && got[3] == s * w {
            return Ok(());
        }
        if got.len() == 4 && got[1] == 3 && got[2] % h.max(1) == 0 && got[2] / h.max(1) != s {
            return Err(ExpertError::ScaleMismatch {
                name: self.name.clone(),
                source_desc: self.source.to_string(),
                expected: self.scale,
                got: (got[2] / h.max(1)) as u32,
            });
        }
        Err(self.bad_output(format!("sr has shape {got:?} for input [{b},3,{h},{w}], expected [{b},3,{},{}]", s * h, s * w)))
    }

    fn bad_output(&self, what: String) -> ExpertError {
        ExpertError::BadOutput { name: self.name.clone(), source_desc: self.source.to_string(), what }
    }
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "Tensor",
        IValue::Tuple(t) if t.len() != 2 => "a tuple of the wrong length",
        IValue::Tuple(_) => "Tuple",
        IValue::GenericList(_) | IValue::TensorList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        _ => "a scalar or object",
    }
}

fn load_script(name: &str, path: &Path, device: Device) -> Result<CModule> {
    if !path.is_file() {
        let reason = if path.exists() { "not a file" } else { "file not found" };
        return Err(ExpertError::Load { name: name.to_string(), path: path.to_path_buf(), reason: reason.into() });
    }
    let mut module = CModule::load_on_device(path, device).map_err(|e| ExpertError::Script {
        name: name.to_string(),
        path: path.to_path_buf(),
        source: TorchFailure::from(e),
    })?;
    module.set_eval();
    Ok(module)
}

/// Deterministic non-constant input: a smooth ramp so models that normalise by variance stay finite.
fn probe_input(b: i64, h: i64, w: i64, device: Device) -> Result<Tensor> {
    let n = b * 3 * h * w;
    Tensor::f_arange(n, (Kind::Float, device))
        .and_then(|t| t.f_mul_scalar(0.37))
        .and_then(|t| t.f_sin())
        .and_then(|t| t.f_mul_scalar(0.5))
        .and_then(|t| t.f_add_scalar(0.5))
        .and_then(|t| t.f_reshape([b, 3, h, w]))
        .map_err(torch("build probe input"))
}
