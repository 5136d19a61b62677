//! Serde configs (TOML in `train.toml`), all with `Default` so a config file only lists what it changes.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which fusion head turns trunk features into the output image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// Per-pixel gates from the trunk features move the output from `delta_expert` toward each other expert
    /// (`base + Σ tanh(g_e)·(sr_e − base)`), plus a residual; starts exactly at that expert.
    Gating,
    /// The same gates per Haar band (each band moves from `delta_expert`'s band), plus a band residual; starts
    /// exactly at that expert.
    Frequency,
    /// Residual on top of `delta_expert`; starts at that expert.
    Delta,
    /// The gating blend, then a refiner of its own (`head_layers` convs on the trunk features and the blended
    /// image) whose zero-initialised last layer adds a residual: starts exactly at `delta_expert` (seed 002's
    /// recipe).
    Refine,
    /// Per-pixel selection only: `head_layers` convs of its own on the trunk features give the gates that move
    /// the output from `delta_expert` toward each expert; no residual, so it can only mix the experts' pixels.
    Select,
}

/// An expert named in a config: `"best"` (the expert with the highest mean PSNR on the training samples, from
/// the manifest), an expert name, or (older configs) an index into the name-sorted expert list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExpertRef {
    Index(usize),
    Name(String),
}

/// The [`ExpertRef`] that means "the best expert on the training data".
pub const BEST_EXPERT: &str = "best";

impl Default for ExpertRef {
    fn default() -> Self {
        ExpertRef::Name(BEST_EXPERT.into())
    }
}

impl From<&str> for ExpertRef {
    fn from(s: &str) -> Self {
        ExpertRef::Name(s.into())
    }
}

impl From<usize> for ExpertRef {
    fn from(i: usize) -> Self {
        ExpertRef::Index(i)
    }
}

impl std::fmt::Display for ExpertRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpertRef::Index(i) => write!(f, "#{i}"),
            ExpertRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

impl ExpertRef {
    /// The index of this expert in `experts` (name-sorted); `best` is `best`'s index. An unknown name or an
    /// index out of range is an error listing the experts.
    pub fn resolve(&self, experts: &[String], best: Option<usize>) -> crate::Result<usize> {
        let bad = |why: String| crate::TrainerError::Config { what: "model.delta_expert".into(), why };
        match self {
            ExpertRef::Name(n) if n == BEST_EXPERT => {
                best.ok_or_else(|| bad("\"best\" needs the training data's per-expert PSNR (resolve it before building the model)".into()))
            }
            ExpertRef::Name(n) => experts
                .iter()
                .position(|e| e == n)
                .ok_or_else(|| bad(format!("{n:?} is not an expert of this dataset (experts: {}; or \"best\")", experts.join(", ")))),
            ExpertRef::Index(i) if *i < experts.len() => Ok(*i),
            ExpertRef::Index(i) => {
                Err(bad(format!("index {i} but only {} experts ({}); name the expert instead", experts.len(), experts.join(", "))))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    pub head: Head,
    /// Filled from the dataset schema when training; must match the data.
    pub experts: Vec<String>,
    /// Feature channels per expert (0 = expert has no features); filled from the dataset.
    pub feat_channels: Vec<usize>,
    pub use_feats: bool,
    /// Output channels of each expert's 1×1 feature projection.
    pub feat_proj: usize,
    pub width: usize,
    pub blocks: usize,
    pub scale: u32,
    /// The expert every head starts from (delta and refine: the one they refine; gating, frequency, select: the
    /// one their weights start on): `"best"` (default: the highest mean manifest PSNR over the training
    /// samples), an expert name, or an index into the name-sorted experts. Training stores the name it resolved.
    pub delta_expert: ExpertRef,
    /// Conv layers of the refine head's own stack (after the trunk), and of the select head's gate.
    pub head_layers: usize,
    /// Adds a zero-initialised Laplacian (high-pass) edge refinement after the head.
    pub edge_refine: bool,
    /// Per expert: the PCA basis its cached features are coefficients on (from the dataset schema, never saved
    /// in the config: the dataset is where it lives).
    #[serde(skip)]
    pub feat_pca: Vec<Option<srcache_formats::PcaBasis>>,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            head: Head::Gating,
            experts: Vec::new(),
            feat_channels: Vec::new(),
            use_feats: true,
            feat_proj: 8,
            width: 48,
            blocks: 4,
            scale: 4,
            delta_expert: ExpertRef::default(),
            head_layers: 2,
            edge_refine: false,
            feat_pca: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    pub l1: f64,
    pub charbonnier: f64,
    pub ssim: f64,
    pub fft: f64,
    pub edge: f64,
    pub wavelet: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { l1: 0.0, charbonnier: 1.0, ssim: 0.0, fft: 0.0, edge: 0.0, wavelet: 0.0 }
    }
}

/// From `from_step` on, `weights` replace the base weights (the last stage that started wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossStage {
    pub from_step: u64,
    pub weights: LossWeights,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    pub weights: LossWeights,
    pub stages: Vec<LossStage>,
}

impl LossConfig {
    pub fn weights_at(&self, step: u64) -> &LossWeights {
        self.stages.iter().filter(|s| s.from_step <= step).max_by_key(|s| s.from_step).map(|s| &s.weights).unwrap_or(&self.weights)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShuffleMode {
    /// One permutation of all samples per epoch (random access through the mmaps is cheap).
    Global,
    /// Shards in random order, samples shuffled within a shard: page-cache friendly for caches larger than RAM.
    ShardLocal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Random sub-crop side in LR pixels; None = whole cached patch.
    pub crop: Option<u32>,
    pub dihedral: bool,
    pub shuffle: ShuffleMode,
    pub workers: usize,
    /// Batches buffered per worker.
    pub prefetch: usize,
    pub seed: u64,
    /// Experts to load (`sr/<name>`, `feat/<name>`); empty = every `sr/*` in the schema, sorted.
    pub experts: Vec<String>,
    pub load_feats: bool,
    /// Deliver u8/f16/bf16 tensors as stored and convert on the device (`Batch::to_device`): half the bytes
    /// to assemble and transfer. Off = the workers convert to f32 on the CPU.
    pub stored_dtype: bool,
    /// Workers copy finished batches into pinned (page-locked) host memory for this CUDA device, so the
    /// training thread's host-to-device copy is a non-blocking DMA (PyTorch's `pin_memory=True`). Set by the
    /// trainer when it trains on CUDA; not part of the saved config.
    #[serde(skip)]
    pub pin_device: Option<tch::Device>,
    /// Keep each sample's decoded (not yet cropped) tensors in RAM after their first read, so later epochs
    /// only crop and flip: for compressed caches that fit in memory, where decode is the loader's limit.
    pub cache_decoded: bool,
    /// RAM budget of `cache_decoded`, in MiB: samples past it are decoded on every read as without it.
    pub cache_decoded_mib: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            crop: None,
            dihedral: true,
            shuffle: ShuffleMode::Global,
            workers: 2,
            prefetch: 2,
            seed: 0,
            experts: Vec::new(),
            load_feats: true,
            stored_dtype: true,
            pin_device: None,
            cache_decoded: false,
            cache_decoded_mib: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Global gradient-norm clip; 0 disables.
    pub clip_grad_norm: f64,
    pub ema_decay: f64,
    pub grad_accum: u32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            min_lr: 1e-6,
            betas: (0.9, 0.99),
            eps: 1e-8,
            weight_decay: 1e-4,
            warmup_steps: 100,
            clip_grad_norm: 1.0,
            ema_decay: 0.999,
            grad_accum: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: FusionConfig,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub loader: LoaderConfig,
    pub steps: u64,
    /// Seconds of training (steps only, validation and checkpoints left out) after which the run ends as if
    /// its last step had come (validated, checkpointed, exported); 0 = no limit. For fixed-budget comparisons.
    pub time_limit_s: f64,
    pub log_every: u64,
    pub val_every: u64,
    pub ckpt_every: u64,
    pub keep_best: usize,
    /// Fraction of source images held out for validation (split by `source`, never by patch).
    pub val_fraction: f64,
    pub val_max_samples: usize,
    /// Benchmark folders (`HR/` + `LR_bicubic/X<scale>/`; LR made with MATLAB bicubic when that folder is
    /// absent) evaluated on full images at validation time: the frozen experts run once at start, then each
    /// validation runs only the fusion model. Needs the experts' sources in the dataset schema.
    pub val_dirs: Vec<PathBuf>,
    /// At most this many images per `val_dirs` folder, first by name (0 = all): full images are slow on CPU.
    pub val_max_images: usize,
    /// LR tile side for running the experts on full validation images (0 = the cache's patch size, which
    /// every expert is known to accept, traced transformers included).
    pub val_tile: u32,
    /// Overlap of those tiles in LR pixels (blended linearly, as `srcache eval` does).
    pub val_tile_overlap: u32,
    /// fp16 autocast + dynamic loss scaling; only ever active on CUDA.
    pub amp: bool,
    /// "cpu", "cuda", "cuda:N" or "auto".
    pub device: String,
    pub threads: Option<usize>,
    pub seed: u64,
    /// TorchScript export of the EMA model at the end of training.
    pub export: bool,
    /// TensorBoard event files under `<run>/tb/` (every logged step's scalars, each validation's tables and
    /// contact sheet); metrics.csv and metrics.parquet are written either way.
    pub tensorboard: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: FusionConfig::default(),
            loss: LossConfig::default(),
            optim: OptimConfig::default(),
            loader: LoaderConfig::default(),
            steps: 1000,
            time_limit_s: 0.0,
            log_every: 10,
            val_every: 200,
            ckpt_every: 200,
            keep_best: 3,
            val_fraction: 0.1,
            val_max_samples: 64,
            val_dirs: Vec::new(),
            val_max_images: 0,
            val_tile: 0,
            val_tile_overlap: 16,
            amp: true,
            device: "auto".to_string(),
            threads: None,
            seed: 0,
            export: true,
            tensorboard: true,
        }
    }
}

impl TrainConfig {
    /// The recipe of `srcache demo` and `bench fidelity`: a few CPU minutes on cached 32×32 patches, validated
    /// on the held-out benchmark folder `bench` at full size with eval's tiles (so val.json and the final table
    /// agree).
    pub fn demo(steps: u64, scale: u32, bench: &std::path::Path) -> TrainConfig {
        // Six validations, so curves.png shows the fused PSNR climbing past the best expert (each costs ~1 s).
        let val_every = (steps / 6).max(1);
        let mut cfg = TrainConfig { steps, device: "cpu".into(), val_every, ckpt_every: steps.max(1), log_every: 10, ..Default::default() };
        cfg.val_dirs = vec![bench.to_path_buf()];
        cfg.val_tile = srcache_experts::Tiling::default().tile as u32;
        cfg.model.scale = scale;
        cfg.val_fraction = 0.15;
        cfg.optim.lr = 1e-3;
        cfg.optim.warmup_steps = steps / 20;
        cfg.optim.ema_decay = 0.99;
        cfg.loader.batch_size = 8;
        // Random 16×16 LR (64×64 HR) sub-crops of the cached 32×32 patches and a slimmer trunk than the default:
        // the fusion trunk runs at HR resolution, and this keeps the demo to a few minutes on 2 cores.
        cfg.loader.crop = Some(16);
        cfg.model.width = 24;
        cfg.model.blocks = 3;
        cfg
    }

    /// The training device, parsed strictly (`cpu`, `cuda`, `cuda:N`, `auto`): a typo or a GPU that is not
    /// there is an error naming the string, never a silent fallback.
    pub fn device(&self) -> crate::Result<tch::Device> {
        Ok(srcache_experts::parse_device(&self.device)?)
    }

    /// Range-checks every number of the config (a NaN learning rate or an EMA decay of 2 trains to a NaN loss,
    /// a width of 0 or 10^5 loader workers end in a libtorch panic or an abort): an error naming the key, its
    /// value and the range, before anything is written. `what` names the config (its file) in the error.
    pub fn validate(&self, what: &str) -> crate::Result<()> {
        let mut bad = Vec::new();
        let mut range = |key: &str, ok: bool, v: String, want: &str| {
            if !ok {
                bad.push(format!("{key} = {v} is outside {want}"));
            }
        };
        let m = &self.model;
        range("model.width", (1..=4096).contains(&m.width), m.width.to_string(), "1..=4096");
        range("model.blocks", (1..=256).contains(&m.blocks), m.blocks.to_string(), "1..=256");
        range("model.feat_proj", (1..=4096).contains(&m.feat_proj), m.feat_proj.to_string(), "1..=4096");
        range("model.scale", (1..=8).contains(&m.scale), m.scale.to_string(), "1..=8");
        range("model.head_layers", (1..=64).contains(&m.head_layers), m.head_layers.to_string(), "1..=64");
        let weights = std::iter::once(("loss.weights".to_string(), &self.loss.weights))
            .chain(self.loss.stages.iter().enumerate().map(|(i, st)| (format!("loss.stages[{i}].weights"), &st.weights)));
        for (key, w) in weights {
            let all = [("l1", w.l1), ("charbonnier", w.charbonnier), ("ssim", w.ssim), ("fft", w.fft), ("edge", w.edge), ("wavelet", w.wavelet)];
            for (name, v) in all {
                range(&format!("{key}.{name}"), v.is_finite() && v >= 0.0, v.to_string(), "finite numbers >= 0");
            }
            range(&key, all.iter().any(|(_, v)| *v > 0.0), "all zero".into(), "weights with at least one positive");
        }
        let o = &self.optim;
        range("optim.lr", o.lr.is_finite() && o.lr > 0.0 && o.lr <= 10.0, o.lr.to_string(), "(0, 10]");
        range("optim.min_lr", o.min_lr.is_finite() && o.min_lr >= 0.0 && o.min_lr <= o.lr, o.min_lr.to_string(), "[0, optim.lr]");
        for (k, b) in [("optim.betas[0]", o.betas.0), ("optim.betas[1]", o.betas.1)] {
            range(k, (0.0..1.0).contains(&b), b.to_string(), "[0, 1)");
        }
        range("optim.eps", o.eps.is_finite() && o.eps > 0.0 && o.eps <= 1.0, o.eps.to_string(), "(0, 1]");
        range("optim.weight_decay", o.weight_decay.is_finite() && (0.0..=1.0).contains(&o.weight_decay), o.weight_decay.to_string(), "[0, 1]");
        range(
            "optim.clip_grad_norm",
            o.clip_grad_norm.is_finite() && o.clip_grad_norm >= 0.0,
            o.clip_grad_norm.to_string(),
            "finite numbers >= 0 (0 = off)",
        );
        range("optim.ema_decay", (0.0..=1.0).contains(&o.ema_decay), o.ema_decay.to_string(), "[0, 1]");
        range("optim.grad_accum", (1..=1024).contains(&o.grad_accum), o.grad_accum.to_string(), "1..=1024");
        let l = &self.loader;
        range("loader.batch_size", (1..=65536).contains(&l.batch_size), l.batch_size.to_string(), "1..=65536");
        if let Some(c) = l.crop {
            range("loader.crop", (1..=32768).contains(&c), c.to_string(), "1..=32768");
        }
        range("loader.workers", l.workers <= 256, l.workers.to_string(), "0..=256");
        range("loader.prefetch", l.prefetch <= 64, l.prefetch.to_string(), "0..=64");
        range("steps", (1..=1 << 40).contains(&self.steps), self.steps.to_string(), "1..=2^40");
        range(
            "time_limit_s",
            self.time_limit_s.is_finite() && self.time_limit_s >= 0.0,
            self.time_limit_s.to_string(),
            "finite seconds >= 0 (0 = none)",
        );
        range("keep_best", self.keep_best <= 1000, self.keep_best.to_string(), "0..=1000");
        range("val_fraction", (0.0..1.0).contains(&self.val_fraction), self.val_fraction.to_string(), "[0, 1) (1 would leave nothing to train on)");
        range("val_tile", self.val_tile <= 32768, self.val_tile.to_string(), "0..=32768 (0 = the cache's patch)");
        if self.val_tile > 0 {
            range("val_tile_overlap", self.val_tile_overlap < self.val_tile, self.val_tile_overlap.to_string(), "0..val_tile");
        }
        if let Some(t) = self.threads {
            range("threads", (1..=1024).contains(&t), t.to_string(), "1..=1024");
        }
        match bad.is_empty() {
            true => Ok(()),
            false => Err(crate::TrainerError::Config { what: what.to_string(), why: bad.join("; ") }),
        }
    }

    /// A built-in preset (`trainer/presets/NAME.toml`), optionally with a config file's keys applied on top
    /// (a key in both: the file's wins, tables merged key by key). Unknown presets name the known ones.
    pub fn from_preset(name: &str, over: Option<&std::path::Path>) -> crate::Result<TrainConfig> {
        let text = preset_text(name).ok_or_else(|| crate::TrainerError::Config {
            what: format!("--preset {name}"),
            why: format!("no such preset (presets: {})", PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
        })?;
        let parse = |what: &str, text: &str| -> crate::Result<toml::Table> {
            toml::from_str(text).map_err(|e| crate::TrainerError::Config { what: what.to_string(), why: srcache_experts::toml_error(text, &e) })
        };
        let mut base = parse(&format!("preset {name}"), text)?;
        let what = match over {
            Some(p) => {
                let t = srcache_formats::read_regular_to_string(p).map_err(crate::error::io_err(p))?;
                merge(&mut base, parse(&p.display().to_string(), &t)?);
                format!("preset {name} + {}", p.display())
            }
            None => format!("preset {name}"),
        };
        toml::Value::Table(base).try_into().map_err(|e: toml::de::Error| crate::TrainerError::Config { what, why: e.to_string() })
    }

    /// Reads a TOML training config; unknown keys (typos such as `learning_rate`) are errors naming the key.
    pub fn from_toml_file(path: &std::path::Path) -> crate::Result<TrainConfig> {
        // Regular files only: a FIFO given as --config would block forever.
        let text = srcache_formats::read_regular_to_string(path).map_err(crate::error::io_err(path))?;
        toml::from_str(&text)
            .map_err(|e| crate::TrainerError::Config { what: path.display().to_string(), why: srcache_experts::toml_error(&text, &e) })
    }
}

/// The built-in presets: (name, TOML), files under `trainer/presets/`.
pub const PRESETS: [(&str, &str); 3] = [
    ("gating", include_str!("../presets/gating.toml")),
    ("refine", include_str!("../presets/refine.toml")),
    ("select", include_str!("../presets/select.toml")),
];

pub fn preset_text(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Applies `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match v {
            toml::Value::Table(o) if matches!(base.get(&k), Some(toml::Value::Table(_))) => {
                if let Some(toml::Value::Table(b)) = base.get_mut(&k) {
                    merge(b, o);
                }
            }
            v => {
                base.insert(k, v);
            }
        }
    }
}
