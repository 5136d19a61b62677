//! The fusion network: a small conv trunk over (bicubic lr, expert outputs, projected expert features) and a
//! selectable head. Every head's output layer is zero-initialised and its base is the expert mean (gating,
//! frequency) or one expert (delta), so step 0 reproduces that base exactly instead of starting from noise.

use crate::config::{FusionConfig, Head};
use crate::error::{Result, TorchCtx, TrainerError};
use crate::ops::{haar_dwt, haar_idwt, laplacian, mean_of, Conv};
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
    Delta { expert: usize, residual: Conv },
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
}

impl FusionNet {
    pub fn new(path: &nn::Path, cfg: &FusionConfig) -> Result<Self> {
        let e = cfg.experts.len();
        if e == 0 {
            return Err(TrainerError::Config { what: "model.experts".into(), why: "at least one expert is needed".into() });
        }
        if cfg.head == Head::Delta && cfg.delta_expert >= e {
            return Err(TrainerError::Config { what: "model.delta_expert".into(), why: format!("{} but only {e} experts", cfg.delta_expert) });
        }
        let trunk = Trunk::new(&(path / "trunk"), cfg);
        let hp = path / "head";
        let w = cfg.width;
        let head = match cfg.head {
            // Zero logits give a uniform softmax, zero residual: output == expert mean at step 0.
            Head::Gating => HeadImpl::Gating { gate: Conv::zeros(&(&hp / "gate"), w, e, 3), residual: Conv::zeros(&(&hp / "res"), w, 3, 3) },
            Head::Frequency => {
                HeadImpl::Frequency { gate: Conv::zeros(&(&hp / "gate"), w + 12, 4 * e, 3), residual: Conv::zeros(&(&hp / "res"), w + 12, 12, 3) }
            }
            Head::Delta => HeadImpl::Delta { expert: cfg.delta_expert, residual: Conv::zeros(&(&hp / "res"), w, 3, 3) },
        };
        let edge = cfg.edge_refine.then(|| EdgeRefine::new(&(path / "edge"), cfg));
        Ok(Self { cfg: cfg.clone(), spec: spec_of(cfg), trunk, head, edge })
    }

    pub fn feat_inputs(&self) -> usize {
        self.trunk.feat_inputs()
    }

    pub fn device(&self) -> tch::Device {
        self.trunk.head.w.device()
    }

    /// The image the head starts from (and reproduces exactly at step 0).
    pub fn base(&self, srs: &[Tensor]) -> Result<Tensor> {
        match &self.head {
            HeadImpl::Delta { expert, .. } => Ok(srs[*expert].shallow_clone()),
            _ => mean_of(srs),
        }
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
        let inv = 1.0 / e as f64;
        let out = match &self.head {
            HeadImpl::Gating { gate, residual } => {
                // base + Σ (w_e − 1/E)·sr_e equals Σ w_e·sr_e, but is bit-exactly the mean when w is uniform.
                let w = gate.forward(&f)?.f_softmax(1, None).ctx("gate softmax")?;
                let mut out = base.f_add(&residual.forward(&f)?).ctx("residual")?;
                for (i, sr) in srs.iter().enumerate() {
                    let wi = w.f_narrow(1, i as i64, 1)?.f_sub_scalar(inv).ctx("gate")?;
                    out = out.f_add(&sr.f_mul(&wi).ctx("gate mul")?).ctx("gate add")?;
                }
                out
            }
            HeadImpl::Frequency { gate, residual } => {
                let bands: Vec<[Tensor; 4]> = srs.iter().map(haar_dwt).collect::<Result<_>>()?;
                let mb = haar_dwt(&base)?;
                let pooled = f.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None).ctx("pool")?;
                let x = Tensor::f_cat(&[pooled, Tensor::f_cat(&mb, 1).ctx("bands")?], 1).ctx("freq concat")?;
                let logits = gate.forward(&x)?;
                let res = residual.forward(&x)?;
                let mut corr: Vec<Tensor> = Vec::with_capacity(4);
                for k in 0..4 {
                    let w = logits.f_narrow(1, (k * e) as i64, e as i64)?.f_softmax(1, None).ctx("band softmax")?;
                    let mut c = res.f_narrow(1, (3 * k) as i64, 3).ctx("band residual")?;
                    for (i, b) in bands.iter().enumerate() {
                        let wi = w.f_narrow(1, i as i64, 1)?.f_sub_scalar(inv).ctx("band gate")?;
                        c = c.f_add(&b[k].f_mul(&wi).ctx("band mul")?).ctx("band add")?;
                    }
                    corr.push(c);
                }
                let corr: [Tensor; 4] = [corr.remove(0), corr.remove(0), corr.remove(0), corr.remove(0)];
                base.f_add(&haar_idwt(&corr)?).ctx("freq add")?
            }
            HeadImpl::Delta { residual, .. } => base.f_add(&residual.forward(&f)?).ctx("delta add")?,
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
