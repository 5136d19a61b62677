//! The fusion network: a small conv trunk over (bicubic lr, expert outputs, projected expert features) and a
//! selectable head. Every head's output layers are zero-initialised and its base is one expert
//! (`delta_expert`, by default the best on the training data), so step 0 reproduces that expert exactly
//! instead of the mean of all (which a weak expert such as bicubic drags down) or noise.

use crate::config::{FusionConfig, Head};
use crate::error::{Result, TorchCtx, TrainerError};
use crate::ops::{haar_dwt, haar_idwt, laplacian, Conv};
use srcache_experts::{Fuser, FusionSpec};
use tch::{nn, Tensor};

fn lrelu(x: &Tensor) -> Result<Tensor> {
    x.f_leaky_relu().ctx("leaky_relu")
}

/// conv-lrelu-conv with identity skip.
#[derive(Debug)]
pub struct ResBlock {
    c1: Conv,
    c2: Conv,
}

impl ResBlock {
    pub fn new(path: &nn::Path, cfg: &FusionConfig) -> Self {
        Self { c1: Conv::new(&(path / "c1"), cfg.width, cfg.width, 3), c2: Conv::new(&(path / "c2"), cfg.width, cfg.width, 3) }
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.c2.forward(&lrelu(&self.c1.forward(x)?)?)?;
        x.f_add(&y).ctx("resblock skip")
    }
}

/// 1×1 projection of one expert's features, pixel-shuffled to HR (bilinear if the size does not divide).
#[derive(Debug)]
pub struct FeatProj {
    conv: Conv,
    proj: usize,
    r: i64,
}

impl FeatProj {
    pub fn new(path: &nn::Path, channels: usize, cfg: &FusionConfig) -> Self {
        let r = cfg.scale.max(1) as i64;
        Self { conv: Conv::new(path, channels, cfg.feat_proj * (r * r) as usize, 1), proj: cfg.feat_proj, r }
    }
    pub fn forward(&self, feat: &Tensor, hw: (i64, i64)) -> Result<Tensor> {
        let y = self.conv.forward(feat)?.f_pixel_shuffle(self.r).ctx("feat pixel_shuffle")?;
        let s = y.size();
        if (s[2], s[3]) == hw {
            return Ok(y);
        }
        debug_assert_eq!(s[1], self.proj as i64);
        y.f_upsample_bilinear2d([hw.0, hw.1], false, None, None).ctx("feat resize")
    }
}

/// Shared feature extractor.
#[derive(Debug)]
pub struct Trunk {
    feats: Vec<Option<FeatProj>>,
    head: Conv,
    blocks: Vec<ResBlock>,
}

impl Trunk {
    pub fn new(path: &nn::Path, cfg: &FusionConfig) -> Self {
        let e = cfg.experts.len().max(1);
        let feats: Vec<Option<FeatProj>> = (0..e)
            .map(|i| {
                let c = cfg.feat_channels.get(i).copied().unwrap_or(0);
                (cfg.use_feats && c > 0).then(|| FeatProj::new(&(path / format!("feat{i}")), c, cfg))
            })
            .collect();
        let nf = feats.iter().filter(|f| f.is_some()).count();
        let cin = 3 + 3 * e + cfg.feat_proj * nf;
        let blocks = (0..cfg.blocks).map(|i| ResBlock::new(&(path / format!("block{i}")), cfg)).collect();
        Self { feats, head: Conv::new(&(path / "head"), cin, cfg.width, 3), blocks }
    }

    /// Number of feature tensors `forward` expects (experts with features, in expert order).
    pub fn feat_inputs(&self) -> usize {
        self.feats.iter().filter(|f| f.is_some()).count()
    }

    pub fn forward(&self, lr_up: &Tensor, srs: &[Tensor], feats: &[Tensor]) -> Result<Tensor> {
        let s = lr_up.size();
        let hw = (s[2], s[3]);
        let mut inputs: Vec<Tensor> = vec![lr_up.shallow_clone()];
        inputs.extend(srs.iter().map(|t| t.shallow_clone()));
        let mut fi = feats.iter();
        for proj in self.feats.iter().flatten() {
            let f = fi.next().ok_or_else(|| TrainerError::Config {
                what: "fusion inputs".into(),
                why: "fewer feature tensors than experts with features".into(),
            })?;
            inputs.push(proj.forward(f, hw)?);
        }
        let x = Tensor::f_cat(&inputs, 1).ctx("trunk concat")?;
        let mut y = lrelu(&self.head.forward(&x)?)?;
        for b in &self.blocks {
            y = b.forward(&y)?;
        }
        Ok(y)
    }
}

#[derive(Debug)]
enum HeadImpl {
    Gating { gate: Conv, residual: Conv },
    Frequency { gate: Conv, residual: Conv },
    Delta { residual: Conv },
    Refine { gate: Conv, stack: Vec<Conv>, out: Conv },
    Select { stack: Vec<Conv>, gate: Conv },
}

/// `base + Σ_e tanh(g_e)·(x_e − base)`: per-pixel moves from the base expert toward each other expert, by a
/// gate in (−1, 1). With zero gates it is exactly `base` (and the gradient on each gate is `x_e − base`, so the
/// experts that differ from the base are where learning starts); the base's own term is identically zero.
fn toward(base: &Tensor, xs: &[Tensor], gates: &Tensor, first: i64) -> Result<Tensor> {
    let mut out = base.shallow_clone();
    for (i, x) in xs.iter().enumerate() {
        let g = gates.f_narrow(1, first + i as i64, 1).ctx("gate")?.f_tanh().ctx("gate tanh")?;
        out = out.f_add(&x.f_sub(base).ctx("toward diff")?.f_mul(&g).ctx("toward mul")?).ctx("toward add")?;
    }
    Ok(out)
}

/// Optional Laplacian edge refinement: sees the trunk features and the high-pass of the head's output.
#[derive(Debug)]
pub struct EdgeRefine {
    c1: Conv,
    out: Conv,
    blur: Tensor,
}

impl EdgeRefine {
    pub fn new(path: &nn::Path, cfg: &FusionConfig) -> Self {
        let mid = (cfg.width / 2).max(8);
        let blur = crate::ops::gaussian_kernel(5, 1.0).to_device(path.device());
        Self { c1: Conv::new(&(path / "c1"), cfg.width + 3, mid, 3), out: Conv::zeros(&(path / "out"), mid, 3, 3), blur }
    }
    pub fn forward(&self, feat: &Tensor, img: &Tensor) -> Result<Tensor> {
        let x = Tensor::f_cat(&[feat.shallow_clone(), laplacian(img, &self.blur)?], 1).ctx("edge concat")?;
        let d = self.out.forward(&lrelu(&self.c1.forward(&x)?)?)?;
        img.f_add(&d).ctx("edge add")
    }
}

#[derive(Debug)]
pub struct FusionNet {
    pub cfg: FusionConfig,
    spec: FusionSpec,
    trunk: Trunk,
    head: HeadImpl,
    edge: Option<EdgeRefine>,
    /// Index of the expert every head starts from (`cfg.delta_expert`, resolved).
    base: usize,
}

/// The index of `cfg.delta_expert` in `cfg.experts`. `"best"` must have been resolved against the training
/// data (`train` does, and stores the name); a model built without data (tests, benchmarks) starts at the first.
pub fn base_index(cfg: &FusionConfig) -> Result<usize> {
    cfg.delta_expert.resolve(&cfg.experts, Some(0))
}

impl FusionNet {
    pub fn new(path: &nn::Path, cfg: &FusionConfig) -> Result<Self> {
        let e = cfg.experts.len();
        if e == 0 {
            return Err(TrainerError::Config { what: "model.experts".into(), why: "at least one expert is needed".into() });
        }
        let base = base_index(cfg)?;
        let trunk = Trunk::new(&(path / "trunk"), cfg);
        let hp = path / "head";
        let w = cfg.width;
        let stack = |name: &str, cin: usize| -> Vec<Conv> {
            (0..cfg.head_layers.max(1)).map(|i| Conv::new(&(&hp / format!("{name}{i}")), if i == 0 { cin } else { w }, w, 3)).collect()
        };
        // Every output layer is zero-initialised: step 0 reproduces the base expert exactly.
        let head = match cfg.head {
            Head::Gating => HeadImpl::Gating { gate: Conv::zeros(&(&hp / "gate"), w, e, 3), residual: Conv::zeros(&(&hp / "res"), w, 3, 3) },
            Head::Frequency => {
                HeadImpl::Frequency { gate: Conv::zeros(&(&hp / "gate"), w + 12, 4 * e, 3), residual: Conv::zeros(&(&hp / "res"), w + 12, 12, 3) }
            }
            Head::Delta => HeadImpl::Delta { residual: Conv::zeros(&(&hp / "res"), w, 3, 3) },
            // The refiner sees the trunk features and the blended image, and owns `head_layers` convs of its own.
            Head::Refine => {
                HeadImpl::Refine { gate: Conv::zeros(&(&hp / "gate"), w, e, 3), stack: stack("r", w + 3), out: Conv::zeros(&(&hp / "out"), w, 3, 3) }
            }
            Head::Select => HeadImpl::Select { stack: stack("s", w), gate: Conv::zeros(&(&hp / "gate"), w, e, 3) },
        };
        let edge = cfg.edge_refine.then(|| EdgeRefine::new(&(path / "edge"), cfg));
        Ok(Self { cfg: cfg.clone(), spec: spec_of(cfg), trunk, head, edge, base })
    }

    pub fn feat_inputs(&self) -> usize {
        self.trunk.feat_inputs()
    }

    pub fn device(&self) -> tch::Device {
        self.trunk.head.w.device()
    }

    /// The image the head starts from (and reproduces exactly at step 0): the base expert's output.
    pub fn base(&self, srs: &[Tensor]) -> Result<Tensor> {
        srs.get(self.base)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| TrainerError::Config { what: "fusion inputs".into(), why: format!("no output for base expert #{}", self.base) })
    }

    /// lr_up: bicubic-upsampled lr [B,3,H,W]; srs: one [B,3,H,W] per expert; feats: one per expert with
    /// features (expert order), at LR resolution. Returns the fused image [B,3,H,W] (not clamped: losses see
    /// the raw output, images are clamped when saved).
    pub fn forward(&self, lr_up: &Tensor, srs: &[Tensor], feats: &[Tensor]) -> Result<Tensor> {
        let e = self.cfg.experts.len();
        if srs.len() != e {
            return Err(TrainerError::Config { what: "fusion inputs".into(), why: format!("{} expert outputs for {e} experts", srs.len()) });
        }
        let f = self.trunk.forward(lr_up, srs, feats)?;
        let base = self.base(srs)?;
        let run = |stack: &[Conv], x: Tensor| -> Result<Tensor> {
            let mut y = x;
            for c in stack {
                y = lrelu(&c.forward(&y)?)?;
            }
            Ok(y)
        };
        let out = match &self.head {
            HeadImpl::Gating { gate, residual } => toward(&base, srs, &gate.forward(&f)?, 0)?.f_add(&residual.forward(&f)?).ctx("residual")?,
            HeadImpl::Frequency { gate, residual } => {
                let bands: Vec<[Tensor; 4]> = srs.iter().map(haar_dwt).collect::<Result<_>>()?;
                let mb = haar_dwt(&base)?;
                let pooled = f.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None).ctx("pool")?;
                let x = Tensor::f_cat(&[pooled, Tensor::f_cat(&mb, 1).ctx("bands")?], 1).ctx("freq concat")?;
                let logits = gate.forward(&x)?;
                let res = residual.forward(&x)?;
                let mut corr: Vec<Tensor> = Vec::with_capacity(4);
                for (k, mbk) in mb.iter().enumerate() {
                    // Each band moves from the base expert's band toward the others' (the base's band added back
                    // below, through the inverse transform of `base`).
                    let xs: Vec<Tensor> = bands.iter().map(|b| b[k].shallow_clone()).collect();
                    let moved = toward(mbk, &xs, &logits, (k * e) as i64)?.f_sub(mbk).ctx("band move")?;
                    corr.push(moved.f_add(&res.f_narrow(1, (3 * k) as i64, 3).ctx("band residual")?).ctx("band add")?);
                }
                let corr: [Tensor; 4] = [corr.remove(0), corr.remove(0), corr.remove(0), corr.remove(0)];
                base.f_add(&haar_idwt(&corr)?).ctx("freq add")?
            }
            HeadImpl::Delta { residual } => base.f_add(&residual.forward(&f)?).ctx("delta add")?,
            HeadImpl::Refine { gate, stack, out } => {
                let blend = toward(&base, srs, &gate.forward(&f)?, 0)?;
                let x = Tensor::f_cat(&[f.shallow_clone(), blend.shallow_clone()], 1).ctx("refine concat")?;
                blend.f_add(&out.forward(&run(stack, x)?)?).ctx("refine add")?
            }
            HeadImpl::Select { stack, gate } => toward(&base, srs, &gate.forward(&run(stack, f.shallow_clone())?)?, 0)?,
        };
        match &self.edge {
            Some(edge) => edge.forward(&f, &out),
            None => Ok(out),
        }
    }
}

/// Per expert: whether a fusion model with this config takes its features.
pub fn wants_feat(cfg: &FusionConfig) -> Vec<bool> {
    spec_of(cfg).wants_feat()
}

/// What an exported model of this config takes (written next to `fusion.pt` as `fusion.json`).
pub fn spec_of(cfg: &FusionConfig) -> FusionSpec {
    FusionSpec { experts: cfg.experts.clone(), feat_channels: cfg.feat_channels.clone(), use_feats: cfg.use_feats, scale: cfg.scale }
}

/// The live model fuses like an exported one, so full-image validation and `srcache eval` share one path.
impl Fuser for FusionNet {
    fn spec(&self) -> &FusionSpec {
        &self.spec
    }

    fn device(&self) -> tch::Device {
        FusionNet::device(self)
    }

    fn fuse(&self, lr_up: &Tensor, srs: &[Tensor], feats: &[Tensor]) -> srcache_experts::Result<Tensor> {
        let dev = FusionNet::device(self);
        let to = |t: &Tensor| t.f_to_device(dev).map_err(srcache_experts::torch("fusion input to device"));
        let srs = srs.iter().map(to).collect::<srcache_experts::Result<Vec<_>>>()?;
        let feats = feats.iter().map(to).collect::<srcache_experts::Result<Vec<_>>>()?;
        self.forward(&to(lr_up)?, &srs, &feats).map_err(|e| srcache_experts::ExpertError::Fuser { source: Box::new(e) })
    }
}

/// Trainable parameter count of a VarStore.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}
