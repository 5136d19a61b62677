//! Experts: frozen super-resolution models behind one contract,
//! `forward(lr f32[B,3,h,w] in [0,1]) -> sr f32[B,3,s·h,s·w]` or `(sr, feat)`.
//!
//! Three kinds: model files, picked by extension ([`ModelFormat`]): AOTInductor packages (`.pt2`, torch.export
//! with dynamic shapes, run through libtorch's package loader, see [`crate::aoti`]) and TorchScript modules
//! (`.pt`, `.ts`, ...), both exported by `python -m srcache.export` or anything else honouring the contract;
//! and the built-in analytic upscalers of [`crate::builtin`]. Each worker thread owns its own [`Expert`] (one
//! model per device and thread), so no locking.
//!
//! A file exported by `python -m srcache.export` says which sizes it takes ([`ExpertMeta`]); a size it cannot
//! take is refused before it runs, naming the sizes that work and the fix. An expert is also probed when it is
//! loaded, at the input size it will be run at: a traced transformer expert without metadata may accept only
//! the size it was traced at, and a probe at any other size would reject an expert the run can use, or accept
//! one it cannot.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::aoti::AotiModel;
use crate::builtin::{builtin_forward, Filters};
use crate::error::{torch, ExpertError, Result, TorchFailure};
use crate::meta::{read_meta, ExpertMeta, ModelFormat};
use crate::source::ExpertSource;

/// Output shapes of an expert for one input size (without the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub sr: Vec<usize>,
    pub feat: Option<Vec<usize>>,
}

enum Body {
    Script(CModule),
    Aoti(AotiModel),
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
    /// What the file says about itself (None for built-ins and files exported without srcache metadata).
    meta: Option<ExpertMeta>,
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
        let meta = match source {
            ExpertSource::TorchScript(path) => read_meta(path)?,
            ExpertSource::Builtin(_) => None,
        };
        if let Some(m) = &meta {
            // Refused from the metadata alone, before the model is loaded or run.
            if m.scale != scale {
                return Err(ExpertError::ScaleMismatch { name: name.into(), source_desc: source.to_string(), expected: scale, got: m.scale });
            }
            if !m.accepts(probe_hw, probe_hw) {
                return Err(size_refused(name, source, m, probe_hw, probe_hw));
            }
        }
        let body = match source {
            ExpertSource::Builtin(which) => Body::Builtin { which: *which, filters: Filters::new(scale, device)? },
            ExpertSource::TorchScript(path) => match ModelFormat::of(path) {
                ModelFormat::Pt2 => Body::Aoti(load_package(name, path, device, meta.as_ref())?),
                ModelFormat::TorchScript => Body::Script(load_script(name, path, device)?),
            },
        };
        let mut expert = Expert { name: name.to_string(), source: source.clone(), scale, device, body, has_feat: false, probe_hw, meta };
        let _guard = tch::no_grad_guard();
        let hw = probe_hw as i64;
        let x = probe_input(2, hw, hw, device)?;
        let (sr, feat) = expert.forward_raw(&x)?;
        expert.has_feat = feat.is_some();
        expert.check_contract(&sr, feat.as_ref(), 2, hw, hw)?;
        let ctx = || format!("expert {}: check probe outputs", expert.name);
        if !all_true(&finite_mask(&sr, feat.as_ref()).map_err(torch(ctx()))?).map_err(torch(ctx()))? {
            return Err(expert.bad_output("returns NaN or infinite values on the probe input (a smooth ramp in [0,1])".into()));
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
    /// What the model file says about itself (`python -m srcache.export` metadata), if anything.
    pub fn meta(&self) -> Option<&ExpertMeta> {
        self.meta.as_ref()
    }
    /// Whether the expert takes an `h`×`w` input, as far as its metadata tells (true without metadata).
    pub fn accepts(&self, h: usize, w: usize) -> bool {
        self.meta.as_ref().is_none_or(|m| m.accepts(h, w))
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
    /// returned as f32; feat keeps the model's values (cast to f32). Outputs holding NaN or an infinity are an
    /// error naming the expert and the sample's position in the batch (a sync with the device; the cache
    /// pipeline uses [`Expert::forward_masked`] instead and checks on the host).
    pub fn forward(&self, lr: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (sr, feat, finite) = self.forward_masked(lr)?;
        let ctx = || format!("expert {}: check outputs", self.name);
        if !all_true(&finite).map_err(torch(ctx()))? {
            let flags = finite.f_to_kind(Kind::Uint8).and_then(|t| t.f_to_device(Device::Cpu)).map_err(torch(ctx()))?;
            let k = (0..flags.size()[0]).find(|&i| flags.f_int64_value(&[i]).unwrap_or(1) == 0).unwrap_or(0);
            return Err(self.bad_output(format!("returned NaN or infinite values for sample {k} of the batch")));
        }
        Ok((sr, feat))
    }

    /// [`Expert::forward`] without the finiteness check's device sync: also returns a bool [B] tensor (on the
    /// device) saying which samples' raw outputs (sr before clamping, and feat) are all finite.
    pub fn forward_masked(&self, lr: &Tensor) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let size = lr.size();
        if size.len() != 4 || size[1] != 3 {
            return Err(self.bad_output(format!("input must be [B,3,h,w], got {size:?}")));
        }
        if let Some(m) = &self.meta {
            let (h, w) = (size[2].max(0) as usize, size[3].max(0) as usize);
            if !m.accepts(h, w) {
                return Err(size_refused(&self.name, &self.source, m, h, w));
            }
        }
        let (sr, feat) = self.forward_raw(lr)?;
        if self.has_feat != feat.is_some() {
            return Err(self.bad_output("returned a different output arity than at probe time".into()));
        }
        self.check_contract(&sr, feat.as_ref(), size[0], size[2], size[3])?;
        let ctx = |what: &str| format!("expert {}: {what}", self.name);
        // Before the clamp, which would turn +inf into a plausible 1.0.
        let finite = finite_mask(&sr, feat.as_ref()).map_err(torch(ctx("check outputs")))?;
        let sr = sr.f_to_kind(Kind::Float).and_then(|t| t.f_clamp(0.0, 1.0)).map_err(torch(ctx("clamp sr")))?;
        let feat = match feat {
            Some(f) => Some(f.f_to_kind(Kind::Float).map_err(torch(ctx("cast feat")))?),
            None => None,
        };
        Ok((sr, feat, finite))
    }

    /// The output contract (FORMAT of the cache, CONTRACTS.md): sr a float [B,3,s·h,s·w] image; feat, when
    /// returned, a float [B,C,fh,fw] map with C, fh, fw ≥ 1 and the input's aspect (fh·w = fw·h). An integer
    /// sr would be clamped to white and 5-D or 1-D features cached as nonsense; both are refused by name.
    fn check_contract(&self, sr: &Tensor, feat: Option<&Tensor>, b: i64, h: i64, w: i64) -> Result<()> {
        self.check_sr(sr, b, h, w)?;
        if !sr.f_is_floating_point().unwrap_or(false) {
            return Err(self.bad_output(format!("sr is {}, expected a floating-point image in [0,1]", kind_name(sr))));
        }
        if let Some(f) = feat {
            let fs = f.size();
            if fs.len() != 4 || fs[0] != b || fs[1..].iter().any(|&d| d < 1) {
                return Err(self.bad_output(format!("feat has shape {fs:?} for input [{b},3,{h},{w}], expected [{b},C,fh,fw]")));
            }
            if fs[2] * w != fs[3] * h {
                return Err(self.bad_output(format!(
                    "feat is {}x{} (h x w) for a {h}x{w} input: not the input's aspect, so it cannot be a feature map of it",
                    fs[2], fs[3]
                )));
            }
            if !f.f_is_floating_point().unwrap_or(false) {
                return Err(self.bad_output(format!("feat is {}, expected a floating-point tensor", kind_name(f))));
            }
        }
        Ok(())
    }

    fn forward_raw(&self, lr: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match &self.body {
            Body::Builtin { which, filters } => {
                builtin_forward(*which, filters, lr, self.scale).map_err(torch(format!("built-in expert {}", self.name)))
            }
            Body::Aoti(model) => {
                let ctx = |what: &str| format!("expert {} ({}): {what}", self.name, self.source);
                // Compiled kernels index their inputs densely.
                let x = lr.f_contiguous().map_err(torch(ctx("make the input contiguous")))?;
                let mut outs = model.run(&[&x]).map_err(|msg| {
                    let failure = TorchFailure::from(tch::TchError::Torch(msg));
                    let s = lr.size();
                    if failure.is_oom() {
                        return ExpertError::Torch { context: ctx("run"), source: failure };
                    }
                    ExpertError::InputSize {
                        name: self.name.clone(),
                        source_desc: self.source.to_string(),
                        h: s.get(2).copied().unwrap_or(0),
                        w: s.get(3).copied().unwrap_or(0),
                        hint: String::new(),
                        source: failure,
                    }
                })?;
                match outs.len() {
                    1 => Ok((outs.remove(0), None)),
                    2 => {
                        let feat = outs.pop();
                        Ok((outs.remove(0), feat))
                    }
                    n => Err(self.bad_output(format!("the package returned {n} outputs, expected sr or (sr, feat)"))),
                }
            }
            Body::Script(module) => {
                let out = module.forward_is(&[IValue::Tensor(lr.shallow_clone())]).map_err(|e| {
                    let failure = TorchFailure::from(e);
                    if failure.is_oom() {
                        return ExpertError::Torch { context: format!("expert {} ({})", self.name, self.source), source: failure };
                    }
                    let s = lr.size();
                    let hint = if s.get(2) != Some(&(self.probe_hw as i64)) || s.get(3) != Some(&(self.probe_hw as i64)) {
                        // No tile size is suggested: the probe size is only known to work for whole tiles, and an
                        // image smaller than a tile is run whole at its own size (how 192 "worked" and then failed).
                        format!(
                            " (it accepted {0}x{0} when loaded; a traced transformer expert accepts only sizes its \
                             attention windows divide, e.g. the size it was exported at: give --tile N with N that size \
                             and no larger than the image, or --cache with the cache it ran in, which tiles at the \
                             cache's patch size)",
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

/// Refuses an input size an exported expert's metadata rules out, from its file alone (no model is loaded):
/// what `cache` checks before it writes anything in its output folder. Experts without metadata (built-ins, files
/// from other exporters) pass here and are probed when loaded.
pub fn check_size(name: &str, source: &ExpertSource, h: usize, w: usize) -> Result<()> {
    let ExpertSource::TorchScript(path) = source else { return Ok(()) };
    match crate::meta::read_meta(path)? {
        Some(m) if !m.accepts(h, w) => Err(size_refused(name, source, &m, h, w)),
        _ => Ok(()),
    }
}

/// The refusal of a size the metadata rules out: what works, and the flag or re-export that fixes it.
fn size_refused(name: &str, source: &ExpertSource, m: &ExpertMeta, h: usize, w: usize) -> ExpertError {
    let fix = match (m.known_size(), source) {
        (Some(t), ExpertSource::TorchScript(path)) => format!(
            "; run it at that size (cache: the patch plus twice its halo must be {t}, e.g. --patch {t} --halo 0; eval/infer: \
             --tile {t}, on images of at least {t}x{t}), or re-export it for any size: {}",
            m.export_command(path)
        ),
        _ => format!(" (the smallest input of this {} is {1}x{1}: upscale or pad smaller images first)", m.arch, m.min_size),
    };
    ExpertError::SizeRefused { name: name.into(), source_desc: source.to_string(), h, w, accepts: m.sizes_text(), fix }
}

fn load_package(name: &str, path: &Path, device: Device, meta: Option<&ExpertMeta>) -> Result<AotiModel> {
    let fail = |reason: String| ExpertError::Load { name: name.to_string(), path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(fail(if path.exists() { "not a file".into() } else { "file not found".into() }));
    }
    // A package holds code compiled for one device type: say so instead of failing on the first run.
    let built_for = meta.and_then(|m| m.device.clone()).unwrap_or_else(|| "cpu".into());
    let cuda_index = match device {
        Device::Cuda(i) => Some(i),
        _ => None,
    };
    match (built_for.as_str(), cuda_index) {
        ("cpu", Some(_)) => {
            return Err(fail(format!(
                "this AOTInductor package was compiled for the CPU, not {}: re-export it on a CUDA machine with \
                 python -m srcache.export --device cuda --checkpoint CHECKPOINT --out FILE.pt2",
                crate::device::device_name(device)
            )))
        }
        ("cuda", None) => {
            return Err(fail(
                "this AOTInductor package was compiled for CUDA: run it on a cuda device, or re-export it for the CPU \
                             (python -m srcache.export --device cpu)"
                    .into(),
            ))
        }
        _ => {}
    }
    let model = AotiModel::load(path, cuda_index).map_err(|e| fail(format!("not a loadable AOTInductor package: {e}")))?;
    // A package without srcache metadata still runs (the probe checks the contract), but say what it is.
    if meta.is_none() {
        model.metadata_json().map_err(|e| fail(format!("cannot read the package metadata: {e}")))?;
    }
    Ok(model)
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

/// Per sample of a batch: whether sr and feat hold only finite values (bool [B], on their device).
fn finite_mask(sr: &Tensor, feat: Option<&Tensor>) -> std::result::Result<Tensor, tch::TchError> {
    let per = |t: &Tensor| -> std::result::Result<Tensor, tch::TchError> {
        let n = t.size().first().copied().unwrap_or(0);
        t.f_isfinite()?.f_reshape([n, -1])?.f_all_dim(1, false)
    };
    let m = per(sr)?;
    match feat {
        Some(f) => m.f_logical_and(&per(f)?),
        None => Ok(m),
    }
}

fn kind_name(t: &Tensor) -> String {
    t.f_kind().map(|k| format!("{k:?}")).unwrap_or_else(|_| "of an unknown element type".into())
}

/// Whether every element of a bool tensor is true (a device sync).
fn all_true(t: &Tensor) -> std::result::Result<bool, tch::TchError> {
    Ok(t.numel() == 0 || t.f_all()?.f_int64_value(&[])? != 0)
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
