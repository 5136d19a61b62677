//! Experts: frozen super-resolution models behind one contract,
//! `forward(lr f32[B,3,h,w] in [0,1]) -> sr f32[B,3,s·h,s·w]` or `(sr, feat)`.
//!
//! Two kinds: TorchScript files (exported by `python/export_expert.py` or anything else honouring the
//! contract) and built-in analytic upscalers written in tch, which need no file and are what the demo and
//! the tests use. Each worker thread owns its own [`Expert`] (one `CModule` per device), so no locking.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::error::{torch, CacheError, Result};

/// Analytic experts available without a file. Their error profiles differ on purpose (smooth, ringing,
/// over-sharpened) so that a fusion network has something to learn even in the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// PyTorch bicubic (a = -0.75), align_corners = false.
    Bicubic,
    /// Separable Lanczos-3, edge-replicated borders.
    Lanczos3,
    /// Bicubic followed by an unsharp mask (gaussian σ = 1, amount 0.6).
    SharpBicubic,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Builtin::Bicubic, Builtin::Lanczos3, Builtin::SharpBicubic];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Bicubic => "bicubic",
            Builtin::Lanczos3 => "lanczos3",
            Builtin::SharpBicubic => "sharp_bicubic",
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Builtin {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self> {
        Builtin::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| CacheError::Config {
            what: format!("unknown built-in expert {s:?} (bicubic, lanczos3, sharp_bicubic)"),
        })
    }
}

/// Where an expert comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpertSource {
    Builtin(Builtin),
    TorchScript(PathBuf),
}

impl fmt::Display for ExpertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpertSource::Builtin(b) => write!(f, "builtin:{b}"),
            ExpertSource::TorchScript(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Output shapes of an expert for one input size (without the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub sr: Vec<usize>,
    pub feat: Option<Vec<usize>>,
}

enum Body {
    Script(CModule),
    Builtin { which: Builtin, filters: Filters },
}

/// Fixed filter banks, built once per device.
struct Filters {
    /// Lanczos phases: horizontal [s,1,1,7] and vertical [s,1,7,1].
    lanczos_h: Tensor,
    lanczos_v: Tensor,
    /// 5×5 gaussian, depthwise over 3 channels: [3,1,5,5].
    gauss: Tensor,
    /// Feature bank over luma: sobel x, sobel y, laplacian, 3×3 box: [4,1,3,3].
    feat: Tensor,
}

/// A loaded expert, bound to one device.
pub struct Expert {
    name: String,
    source: ExpertSource,
    scale: u32,
    device: Device,
    body: Body,
    has_feat: bool,
}

const PROBE_HW: i64 = 16;

impl Expert {
    /// Loads the expert on `device` and runs one probe batch: detects whether it returns `(sr, feat)` and
    /// checks that sr is `scale`× the input. Any problem is reported here, before a run starts.
    pub fn load(name: &str, source: &ExpertSource, scale: u32, device: Device) -> Result<Expert> {
        Expert::load_probed(name, source, scale, device, PROBE_HW as usize)
    }

    /// As [`Expert::load`], probing at `probe_hw`×`probe_hw` (traced transformer experts only accept the
    /// size they were traced at: use the run's patch size).
    pub fn load_probed(name: &str, source: &ExpertSource, scale: u32, device: Device, probe_hw: usize) -> Result<Expert> {
        let hw = probe_hw as i64;
        if !(1..=8).contains(&scale) {
            return Err(CacheError::Config { what: format!("expert {name}: scale {scale} outside 1..=8") });
        }
        let body = match source {
            ExpertSource::Builtin(which) => Body::Builtin { which: *which, filters: Filters::new(scale, device)? },
            ExpertSource::TorchScript(path) => Body::Script(load_script(name, path, device)?),
        };
        let mut expert =
            Expert { name: name.to_string(), source: source.clone(), scale, device, body, has_feat: false };
        let _guard = tch::no_grad_guard();
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
            return Err(CacheError::Expert {
                name: self.name.clone(),
                what: format!("input must be [B,3,h,w], got {size:?}"),
            });
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
                let out = module
                    .forward_is(&[IValue::Tensor(lr.shallow_clone())])
                    .map_err(torch(format!("expert {} ({})", self.name, self.source)))?;
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
                    other => Err(self.bad_output(format!(
                        "returned {}, expected a Tensor or a (sr, feat) tuple",
                        ivalue_kind(&other)
                    ))),
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
            return Err(CacheError::ScaleMismatch {
                name: self.name.clone(),
                source_desc: self.source.to_string(),
                expected: self.scale,
                got: (got[2] / h.max(1)) as u32,
            });
        }
        Err(self.bad_output(format!("sr has shape {got:?} for input [{b},3,{h},{w}], expected [{b},3,{},{}]", s * h, s * w)))
    }

    fn bad_output(&self, what: String) -> CacheError {
        CacheError::Expert { name: self.name.clone(), what: format!("{} {what}", self.source) }
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
    let err = |reason: String| CacheError::ExpertLoad { name: name.to_string(), path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(err("file not found".into()));
    }
    let mut module = CModule::load_on_device(path, device).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        err(format!("not a loadable TorchScript module ({first})"))
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

fn lanczos(x: f64, a: f64) -> f64 {
    if x.abs() < 1e-12 {
        return 1.0;
    }
    if x.abs() >= a {
        return 0.0;
    }
    let px = std::f64::consts::PI * x;
    a * px.sin() * (px / a).sin() / (px * px)
}

impl Filters {
    fn new(scale: u32, device: Device) -> Result<Filters> {
        let s = scale as usize;
        // Output pixel i = j·s + p samples LR coordinate j + (p + 0.5)/s - 0.5; taps at j-3..=j+3.
        let mut taps = Vec::with_capacity(s * 7);
        for p in 0..s {
            let c = (p as f64 + 0.5) / s as f64 - 0.5;
            let w: Vec<f64> = (-3..=3).map(|k| lanczos(c - k as f64, 3.0)).collect();
            let sum: f64 = w.iter().sum();
            taps.extend(w.iter().map(|v| (v / sum) as f32));
        }
        let g1: Vec<f64> = (-2..=2).map(|k: i32| (-(k * k) as f64 / 2.0).exp()).collect();
        let gs: f64 = g1.iter().sum();
        let mut gauss = Vec::with_capacity(3 * 25);
        for _ in 0..3 {
            for a in &g1 {
                for b in &g1 {
                    gauss.push((a * b / (gs * gs)) as f32);
                }
            }
        }
        #[rustfmt::skip]
        let feat: [f32; 36] = [
            -1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0,
            -1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0,
            0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0,
            1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0,
        ];
        let mk = |v: &[f32], shape: &[i64]| {
            Tensor::f_from_slice(v).and_then(|t| t.f_reshape(shape)).and_then(|t| t.f_to_device(device))
        };
        let s = scale as i64;
        Ok(Filters {
            lanczos_h: mk(&taps, &[s, 1, 1, 7]).map_err(torch("lanczos taps"))?,
            lanczos_v: mk(&taps, &[s, 1, 7, 1]).map_err(torch("lanczos taps"))?,
            gauss: mk(&gauss, &[3, 1, 5, 5]).map_err(torch("gaussian"))?,
            feat: mk(&feat, &[4, 1, 3, 3]).map_err(torch("feature filters"))?,
        })
    }
}

fn builtin_forward(
    which: Builtin,
    f: &Filters,
    lr: &Tensor,
    scale: u32,
) -> std::result::Result<(Tensor, Option<Tensor>), tch::TchError> {
    let size = lr.size();
    let (b, h, w) = (size[0], size[2], size[3]);
    let s = scale as i64;
    let lr = lr.f_to_kind(Kind::Float)?;
    let bicubic = || lr.f_upsample_bicubic2d([s * h, s * w], false, s as f64, s as f64);
    let sr = match which {
        Builtin::Bicubic => bicubic()?,
        Builtin::SharpBicubic => {
            let up = bicubic()?;
            let blur = up.f_replication_pad2d([2, 2, 2, 2])?.f_conv2d(&f.gauss, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3)?;
            let detail = up.f_sub(&blur)?;
            up.f_add(&detail.f_mul_scalar(0.6)?)?
        }
        Builtin::Lanczos3 => {
            let x = lr.f_reshape([b * 3, 1, h, w])?;
            let x = x.f_replication_pad2d([3, 3, 0, 0])?.f_conv2d(&f.lanczos_h, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
            // [N, s, h, w] -> [N, 1, h, w·s]: phase p lands at column j·s + p.
            let x = x.f_permute([0, 2, 3, 1])?.f_reshape([b * 3, 1, h, w * s])?;
            let x = x.f_replication_pad2d([0, 0, 3, 3])?.f_conv2d(&f.lanczos_v, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
            x.f_permute([0, 2, 1, 3])?.f_reshape([b, 3, h * s, w * s])?
        }
    };
    let sr = sr.f_clamp(0.0, 1.0)?;
    // Fixed-filter responses of the luma at LR size: cheap, but a real [B,C,h,w] feature to cache.
    let coeffs = Tensor::f_from_slice(&[0.299f32, 0.587, 0.114])?.f_reshape([1, 3, 1, 1])?.f_to_device(lr.device())?;
    let y = lr.f_mul(&coeffs)?.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
    let feat = y.f_replication_pad2d([1, 1, 1, 1])?.f_conv2d(&f.feat, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
    Ok((sr, Some(feat)))
}

/// Parses a device list: `cpu`, `cpu:N` (N CPU workers), `cuda`, `cuda:0,cuda:1`.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || CacheError::Config { what: format!("bad device {part:?} (cpu, cpu:N, cuda, cuda:I)") };
        match part.split_once(':') {
            None if part == "cpu" => out.push(Device::Cpu),
            None if part == "cuda" => out.push(Device::Cuda(0)),
            Some(("cpu", n)) => {
                let n: usize = n.parse().map_err(|_| bad())?;
                if n == 0 {
                    return Err(bad());
                }
                out.extend(std::iter::repeat_n(Device::Cpu, n));
            }
            Some(("cuda", i)) => out.push(Device::Cuda(i.parse().map_err(|_| bad())?)),
            _ => return Err(bad()),
        }
    }
    if out.is_empty() {
        return Err(CacheError::Config { what: "no devices given".into() });
    }
    for d in &out {
        if let Device::Cuda(i) = d {
            let n = tch::Cuda::device_count();
            if (*i as i64) >= n {
                return Err(CacheError::Config { what: format!("device cuda:{i} requested but {n} CUDA device(s) visible") });
            }
        }
    }
    Ok(out)
}
