//! The one training loop shared by every head: AdamW + warm-up/cosine, clipping, EMA, accumulation,
//! CUDA-only fp16 autocast with dynamic loss scaling, atomic checkpoints, exact resume, metrics and plot.

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::error::{io_err, Result, TorchCtx, TrainerError};
use crate::loader::{Batch, Loader, LoaderPosition};
use crate::losses;
use crate::metrics::{MetricsCsv, MetricsParquet, Row};
use crate::model::FusionNet;
use crate::ops::upsample_bicubic;
use crate::optim::{ema_update, lr_at, AdamW, LossScaler};
use crate::tensorboard::{EventWriter, TB_DIR};
use crate::validate::{self, FullImageVal, ValReport, ValTable};
use srcache_formats::Dataset;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn::VarStore, Device, Tensor};

/// Anything that yields batches with a resumable position (the shard loader, or in-memory batches in tests
/// and the loader benchmark's synthetic baseline).
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<Batch>;
    fn position(&self) -> LoaderPosition;
    fn seek(&mut self, pos: LoaderPosition) -> Result<()>;
}

impl BatchSource for Loader {
    fn next_batch(&mut self) -> Result<Batch> {
        Loader::next_batch(self)
    }
    fn position(&self) -> LoaderPosition {
        Loader::position(self)
    }
    fn seek(&mut self, pos: LoaderPosition) -> Result<()> {
        Loader::seek(self, pos)
    }
}

/// Cycles through prepared batches; position.batch indexes them.
pub struct MemorySource {
    pub batches: Vec<Batch>,
    pub next: u64,
}

impl BatchSource for MemorySource {
    fn next_batch(&mut self) -> Result<Batch> {
        let n = self.batches.len().max(1) as u64;
        let b = self.batches.get((self.next % n) as usize).ok_or_else(|| TrainerError::Loader { why: "no batches".into() })?;
        self.next += 1;
        b.try_map(|t| Ok(t.shallow_clone()))
    }
    fn position(&self) -> LoaderPosition {
        let n = self.batches.len().max(1) as u64;
        LoaderPosition { epoch: self.next / n, batch: self.next % n }
    }
    fn seek(&mut self, pos: LoaderPosition) -> Result<()> {
        self.next = pos.epoch * self.batches.len() as u64 + pos.batch;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct StepOut {
    pub step: u64,
    pub loss: f64,
    pub parts: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub skipped: bool,
    pub samples: usize,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub device: Device,
    pub vs: VarStore,
    pub ema_vs: VarStore,
    pub model: FusionNet,
    pub ema: FusionNet,
    pub opt: AdamW,
    pub scaler: LossScaler,
    pub step: u64,
    pub best: Vec<(u64, f64)>,
}

/// Runs `model` on a batch: bicubic(lr) + experts (+ features) -> fused image.
pub fn fuse(model: &FusionNet, b: &Batch) -> Result<Tensor> {
    let lr_up = upsample_bicubic(&b.lr, model.cfg.scale)?;
    model.forward(&lr_up, &b.sr, &b.feat)
}

impl Trainer {
    /// `cfg.model.experts` / `feat_channels` must already describe the data.
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        let device = cfg.device()?;
        if let Some(t) = cfg.threads {
            tch::set_num_threads(t as i32);
        }
        tch::manual_seed(cfg.seed as i64);
        let vs = VarStore::new(device);
        let model = FusionNet::new(&vs.root(), &cfg.model)?;
        let mut ema_vs = VarStore::new(device);
        let ema = FusionNet::new(&ema_vs.root(), &cfg.model)?;
        ema_vs.copy(&vs).ctx("ema init")?;
        ema_vs.freeze();
        let opt = AdamW::new(&vs, &cfg.optim)?;
        // fp16 autocast and loss scaling only make sense (and only exist in libtorch) on CUDA.
        let scaler = LossScaler::new(cfg.amp && device.is_cuda());
        Ok(Self { cfg: cfg.clone(), device, vs, ema_vs, model, ema, opt, scaler, step: 0, best: Vec::new() })
    }

    pub fn train_step(&mut self, src: &mut dyn BatchSource) -> Result<StepOut> {
        let accum = self.cfg.optim.grad_accum.max(1);
        let lr = lr_at(&self.cfg.optim, self.step, self.cfg.steps);
        let weights = self.cfg.loss.weights_at(self.step).clone();
        self.opt.zero_grad()?;
        let mut loss_sum = 0.0;
        let mut parts_sum: Vec<(String, f64)> = Vec::new();
        let mut samples = 0;
        let amp = self.scaler.enabled;
        for _ in 0..accum {
            let b = src.next_batch()?.to_device(self.device)?;
            samples += b.lr.size()[0] as usize;
            let model = &self.model;
            let (loss, parts) = tch::autocast(amp, || -> Result<_> {
                let out = fuse(model, &b)?;
                losses::total(&out.f_to_kind(tch::Kind::Float).ctx("out to f32")?, &b.hr, &weights)
            })?;
            let scaled = loss.f_mul_scalar(self.scaler.scale / accum as f64).ctx("scale loss")?;
            scaled.f_backward().ctx("backward")?;
            loss_sum += loss.f_double_value(&[]).ctx("loss value")? / accum as f64;
            for (name, v) in parts {
                let v = v.f_double_value(&[]).ctx("loss part")? / accum as f64;
                match parts_sum.iter_mut().find(|(n, _)| n == name) {
                    Some(p) => p.1 += v,
                    None => parts_sum.push((name.to_string(), v)),
                }
            }
        }
        if self.scaler.scale != 1.0 {
            self.opt.scale_grads(1.0 / self.scaler.scale)?;
        }
        let grad_norm = self.opt.clip(self.cfg.optim.clip_grad_norm)?;
        let ok = self.scaler.update(grad_norm);
        if ok {
            self.opt.step(lr)?;
            ema_update(&self.ema_vs, &self.vs, self.cfg.optim.ema_decay)?;
        }
        self.step += 1;
        Ok(StepOut { step: self.step, loss: loss_sum, parts: parts_sum, lr, grad_norm, skipped: !ok, samples })
    }

    pub fn state(&self, loader: LoaderPosition, val_psnr: Option<f64>) -> TrainState {
        TrainState {
            step: self.step,
            adam_t: self.opt.t,
            loader,
            scaler: self.scaler.clone(),
            config: self.cfg.clone(),
            val_psnr,
            best: self.best.clone(),
        }
    }

    pub fn save(&self, run: &Path, loader: LoaderPosition, val_psnr: Option<f64>) -> Result<PathBuf> {
        checkpoint::save(run, &self.state(loader, val_psnr), &self.vs, &self.ema_vs, &self.opt)
    }

    /// Restores the latest checkpoint of `run`; returns the loader position to seek to.
    pub fn resume(&mut self, run: &Path) -> Result<Option<LoaderPosition>> {
        let Some(dir) = checkpoint::latest(run)? else { return Ok(None) };
        let st = checkpoint::read_state(&dir)?;
        // The PCA bases come from the dataset, not the saved config.
        let mut saved = st.config.model.clone();
        saved.feat_pca = self.cfg.model.feat_pca.clone();
        // The base expert is compared by what it resolves to: a checkpoint names it, a config may say "best" (or an
        // index), and a trainer built without the data starts "best" at the first expert.
        if crate::model::base_index(&saved).ok() == crate::model::base_index(&self.cfg.model).ok() {
            saved.delta_expert = self.cfg.model.delta_expert.clone();
        }
        if saved != self.cfg.model {
            return Err(TrainerError::Checkpoint { path: dir, why: "model config differs from the checkpoint's".into() });
        }
        checkpoint::load_into(&dir, &st, &mut self.vs, &mut self.ema_vs, &mut self.opt)?;
        self.step = st.step;
        self.scaler = st.scaler;
        self.best = st.best;
        Ok(Some(st.loader))
    }
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_loss: f64,
    /// The last validation on held-out cached samples.
    pub val: Option<ValTable>,
    /// The last full-image validation, one table per `val_dirs` folder.
    pub val_full: Vec<ValTable>,
    pub params: i64,
    pub run_dir: PathBuf,
    pub exported: Option<PathBuf>,
    pub samples_per_s: f64,
    /// The split by source image (also in `split.json`).
    pub split: Split,
    /// The expert the head started from.
    pub base_expert: String,
    /// The last validation's "fused − best expert" margin on its primary tables (full images when `val_dirs`
    /// are given, else held-out samples): (what it was measured on, best expert, dB).
    pub margin: Option<(String, String, f64)>,
}

/// A train/validation split by source image, with the sources named (`split.json` in the run directory).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub fraction: f64,
    pub seed: u64,
    /// Held-out source images (manifest `source`), sorted.
    pub held_out: Vec<String>,
    /// Training source images, sorted.
    pub train_sources: Vec<String>,
    #[serde(skip)]
    pub train: Vec<usize>,
    #[serde(skip)]
    pub val: Vec<usize>,
}

/// The run's split record, next to its checkpoints.
pub const SPLIT_FILE: &str = "split.json";

impl Split {
    /// Splits sample indices by source image (the manifest's `source`, the HR file's path relative to the
    /// input root, so moving or copying a dataset keeps its split). Sources are ranked by a seeded hash of that
    /// key and the first `round(fraction · sources)` are held out — at least one when `fraction > 0` and there
    /// are two or more sources, so a small dataset never silently validates on nothing.
    pub fn of(ds: &Dataset, fraction: f64, seed: u64) -> Split {
        let rows = ds.manifest();
        let mut sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        let n = sources.len();
        // One source, or none asked for: nothing held out (training needs at least one source).
        let k = if fraction > 0.0 && n >= 2 { ((fraction * n as f64).round() as usize).clamp(1, n - 1) } else { 0 };
        let mut ranked = sources.clone();
        ranked.sort_by_key(|src| (xx(src.as_bytes(), seed), *src));
        let mut held: Vec<String> = ranked[..k.min(n)].iter().map(|s| s.to_string()).collect();
        held.sort();
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (i, row) in rows.iter().enumerate() {
            match held.binary_search_by(|h| h.as_str().cmp(row.source.as_str())) {
                Ok(_) => val.push(i),
                Err(_) => train.push(i),
            }
        }
        let train_sources = sources.iter().filter(|s| held.binary_search_by(|h| h.as_str().cmp(**s)).is_err()).map(|s| s.to_string()).collect();
        Split { fraction, seed, held_out: held, train_sources, train, val }
    }
}

/// Mean manifest PSNR of each of `experts` over the samples `idx` (None for an expert with no PSNR there).
pub fn mean_psnr(ds: &Dataset, idx: &[usize], experts: &[String]) -> Vec<Option<f64>> {
    let rows = ds.manifest();
    experts
        .iter()
        .map(|e| {
            let v: Vec<f64> = idx.iter().filter_map(|&i| rows.get(i)?.psnr.get(e).map(|&p| p as f64)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// The index of the expert with the highest mean manifest PSNR over `idx` (ties: the first by name).
pub fn best_expert(ds: &Dataset, idx: &[usize], experts: &[String]) -> Option<usize> {
    let m = mean_psnr(ds, idx, experts);
    let mut best: Option<(usize, f64)> = None;
    for (i, p) in m.into_iter().enumerate() {
        if let Some(p) = p {
            if best.is_none_or(|(_, b)| p > b) {
                best = Some((i, p));
            }
        }
    }
    best.map(|(i, _)| i)
}

fn xx(b: &[u8], seed: u64) -> u64 {
    // FNV-1a then a seed mix: stable across platforms and releases (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &c in b {
        h ^= c as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Consecutive non-finite losses tolerated under fp16 loss scaling before a run counts as diverged.
const MAX_NON_FINITE_STEPS: u32 = 50;

/// Per-step observer (progress bars, logs).
pub type Progress<'a> = &'a mut dyn FnMut(&Row);

/// Full run over a cached dataset directory: writes checkpoints, metrics.csv (logged steps), metrics.parquet
/// (every step), curves.png + .svg, val.json (the last validation), val.log (every validation's tables),
/// val_sheet.png + .svg (the last validation's contact sheet), TensorBoard events in tb/, fusion.pt.
/// The final model is always validated: at the last step, on the held-out samples (or `val_dirs`), or, when
/// the split held no source out, on training samples (labelled so in every table).
pub fn train(cfg: &TrainConfig, data: &Path, run: &Path, resume: bool, progress: Progress) -> Result<TrainSummary> {
    // Every number range-checked before anything is opened or written.
    cfg.validate("train config")?;
    let device = cfg.device()?;
    let ds = Arc::new(Dataset::open(data)?);
    // Held until the run ends: a second `train` into the same run directory is refused, not interleaved.
    let _lock = claim_run_dir(run, resume)?;
    let mut cfg = cfg.clone();
    let split = Split::of(&ds, cfg.val_fraction, cfg.seed);
    let (train_idx, val_idx) = (split.train.clone(), split.val.clone());
    let mut lcfg = cfg.loader.clone();
    if device.is_cuda() {
        lcfg.pin_device = Some(device);
    }
    let mut loader = Loader::new(ds.clone(), train_idx.clone(), &lcfg, LoaderPosition::default())?;
    cfg.model.experts = loader.experts.clone();
    cfg.model.feat_channels = loader.feat_channels.clone();
    // The expert the heads start from, by name: "best" is resolved here on the training samples' PSNR (the
    // manifest's), and the config saved with the run names it, so a resume or an export starts from the same one.
    if cfg.model.experts.is_empty() {
        // An ingest-only dataset (lr/hr patches, no `sr/<expert>` tensors): there is nothing to fuse.
        return Err(crate::TrainerError::Config {
            what: format!("dataset {}", data.display()),
            why: "it holds no expert outputs (no sr/<expert> tensors): cache experts with `srcache cache` first".into(),
        });
    }
    let best = best_expert(&ds, &train_idx, &cfg.model.experts);
    let base = cfg.model.delta_expert.resolve(&cfg.model.experts, best.or(Some(0)))?;
    let base_name = cfg.model.experts[base].clone();
    cfg.model.delta_expert = crate::config::ExpertRef::Name(base_name.clone());
    // Features cached as PCA coefficients: the model trains on them; validation projects full images' features
    // the same way, and the export folds the basis into the model.
    let schema = ds.schema().cloned().unwrap_or_default();
    cfg.model.feat_pca = cfg.model.experts.iter().map(|e| schema.pca(e).transpose()).collect::<std::result::Result<_, _>>()?;
    // The shapes define the scale (Dataset::open checked that a `scale` attr agrees with them); the attr is only
    // a fallback for a dataset without both lr and hr, which the loader refuses anyway.
    if let Some(s) = ds.schema().and_then(|s| s.sr_scale().or_else(|| s.scale())) {
        cfg.model.scale = s;
    }
    let mut tr = Trainer::new(&cfg)?;
    let resumed = if resume { tr.resume(run)? } else { None };
    if resumed.is_some() && tr.step > cfg.steps {
        return Err(TrainerError::RunDir {
            path: run.to_path_buf(),
            why: format!("is at step {}; steps = {} would end before it: give at least {} (nothing was changed)", tr.step, cfg.steps, tr.step),
        });
    }
    let identity = DataIdentity::of(&ds)?;
    identity.check(run, resumed.is_some())?;
    if let Some(pos) = resumed {
        loader.seek(pos)?;
    }
    let resume_step = resumed.map(|_| tr.step);
    // Everything that can refuse the command (a bad val_dirs folder included) runs before the first file is
    // written: a refused start or resume leaves the run directory as it was, and the corrected command runs.
    let full_val = if cfg.val_dirs.is_empty() || tr.step >= cfg.steps { None } else { Some(FullImageVal::prepare(&cfg, &cfg.model, &ds)?) };
    let cfg_text = toml::to_string(&cfg).map_err(|e| TrainerError::Config { what: "train config".into(), why: e.to_string() })?;
    srcache_formats::write_atomic(&run.join("config.toml"), cfg_text.as_bytes())?;
    identity.save(run)?;
    let split_json = serde_json::to_vec_pretty(&split).map_err(|e| TrainerError::Config { what: SPLIT_FILE.into(), why: e.to_string() })?;
    srcache_formats::write_atomic(&run.join(SPLIT_FILE), &split_json)?;
    let mut csv = MetricsCsv::open(run, resume_step)?;
    let mut pq = MetricsParquet::open(run, resume_step)?;
    let mut tb = if cfg.tensorboard { Some(EventWriter::create(&run.join(TB_DIR), resume_step)?) } else { None };
    // The frozen experts ran over the full validation images once, above; validations only run the fusion.
    if let Some(v) = full_val.as_ref().filter(|v| !v.skipped.is_empty()) {
        let lines: String = v.skipped.iter().map(|(p, why)| format!("validation skipped {}: {why}\n", p.display())).collect();
        append_log(run, &lines)?;
    }
    let params = crate::model::param_count(&tr.vs);
    let mut last_loss = f64::NAN;
    let mut non_finite = 0u32;
    let mut report: Option<ValReport> = None;
    let t0 = Instant::now();
    // Training time, steps and samples since the last logged row: throughput leaves validation and
    // checkpoint time out, so full-image validations do not show up as dips in steps/s.
    let mut window = (0.0f64, 0u64, 0usize);
    let mut total_samples = 0usize;
    // Training time (steps only): what `time_limit_s` bounds.
    let mut train_s = 0.0f64;
    // Without a held-out source (a split of very few images) the model is still scored, on training samples.
    let (score_idx, score_source) = if val_idx.is_empty() {
        // The first samples in dataset order, so every validation scores the same ones.
        let mut v = train_idx.clone();
        v.sort_unstable();
        v.truncate(cfg.val_max_samples.max(1));
        (v, Some(TRAIN_SCORE_SOURCE))
    } else {
        (val_idx.clone(), None)
    };
    while tr.step < cfg.steps {
        let t_step = Instant::now();
        let out = tr.train_step(&mut loader)?;
        let dt_step = t_step.elapsed().as_secs_f64().max(1e-9);
        // With fp16 loss scaling an overflowing step is skipped and the scale lowered: a few are normal. Without
        // it, or for many steps in a row, a non-finite loss means the run diverged; ending it here keeps the last
        // checkpoint (and a finished run never reports "final loss NaN").
        non_finite = if out.loss.is_finite() { 0 } else { non_finite + 1 };
        if non_finite > 0 && (!tr.scaler.enabled || non_finite >= MAX_NON_FINITE_STEPS) {
            return Err(TrainerError::Diverged {
                step: out.step,
                why: format!(
                    "loss is {} ({non_finite} step(s) in a row); lower optim.lr, check the cache with `srcache verify`, or resume from the last checkpoint",
                    out.loss
                ),
            });
        }
        last_loss = out.loss;
        total_samples += out.samples;
        window.0 += dt_step;
        window.1 += 1;
        window.2 += out.samples;
        train_s += dt_step;
        // A time budget ends the run at this step as if it were the last one: validated, checkpointed, exported.
        let last = tr.step == cfg.steps || (cfg.time_limit_s > 0.0 && train_s >= cfg.time_limit_s);
        let mut row = Row { step: out.step, loss: out.loss, parts: out.parts.clone(), lr: out.lr, grad_norm: out.grad_norm, ..Default::default() };
        let has_val = !score_idx.is_empty() || full_val.is_some();
        let do_val = has_val && (last || (cfg.val_every > 0 && tr.step % cfg.val_every == 0));
        if do_val {
            // Training samples only stand in when nothing else scores the model.
            let held_out = if score_idx.is_empty() || (score_source.is_some() && full_val.is_some()) {
                None
            } else {
                let mut t = validate::held_out(&tr.ema, &ds, &score_idx, &cfg)?;
                if let Some(src) = score_source {
                    t.source = src.into();
                }
                Some(t)
            };
            let full = match &full_val {
                Some(v) => v.evaluate(&tr.ema)?,
                None => Vec::new(),
            };
            let r = ValReport { step: tr.step, held_out, full };
            row.val_psnr = r.psnr();
            row.val_ssim = r.ssim();
            row.val_best_expert_psnr = r.best_expert_psnr();
            append_log(run, &format!("{r}\n"))?;
            if let Some(sheet) = crate::val_sheet::build(&tr.ema, &ds, &score_idx, &cfg)? {
                let img = crate::plot::save_sheet(&sheet, &run.join("val_sheet.png"))?;
                if let Some(tb) = tb.as_mut() {
                    tb.image("val/sheet", tr.step, &crate::plot::png_bytes(&img)?, img.width(), img.height())?;
                }
            }
            if let Some(tb) = tb.as_mut() {
                tb.scalars(tr.step, &val_scalars(&r))?;
            }
            report = Some(r);
        }
        pq.push(Row { steps_per_s: 1.0 / dt_step, samples_per_s: out.samples as f64 / dt_step, ..row.clone() });
        let dt = window.0.max(1e-9);
        row.steps_per_s = window.1 as f64 / dt;
        row.samples_per_s = window.2 as f64 / dt;
        if last || do_val || (cfg.log_every > 0 && tr.step % cfg.log_every == 0) {
            window = (0.0, 0, 0);
            csv.write(&row)?;
            if let Some(tb) = tb.as_mut() {
                tb.scalars(row.step, &train_scalars(&row))?;
                tb.flush()?;
            }
        }
        // Rows between logged steps carry the running rate of the current window: the progress bar shows
        // one consistent steps/s and samples/s, never a zero between log points.
        progress(&row);
        if last || (cfg.ckpt_every > 0 && tr.step % cfg.ckpt_every == 0) || do_val {
            if let Some(p) = row.val_psnr {
                checkpoint::update_best(&mut tr.best, tr.step, p, cfg.keep_best);
            }
            tr.save(run, loader.position(), row.val_psnr)?;
            checkpoint::prune(run, &tr.best, tr.step)?;
            pq.flush()?;
        }
        if last {
            break;
        }
    }
    drop(csv);
    pq.flush()?;
    crate::metrics::plot(&pq.rows, &run.join("curves.png"))?;
    if let Some(v) = &report {
        let json = serde_json::to_vec_pretty(v).map_err(|e| TrainerError::Config { what: "val table".into(), why: e.to_string() })?;
        srcache_formats::write_atomic(&run.join("val.json"), &json)?;
    }
    let exported = if cfg.export {
        let p = run.join("fusion.pt");
        crate::export::export(&tr.ema, &tr.ema_vs, &loader.feat_channels, &p)?;
        Some(p)
    } else {
        None
    };
    let margin = report.as_ref().and_then(ValReport::margin);
    Ok(TrainSummary {
        steps: tr.step,
        final_loss: last_loss,
        val: report.as_ref().and_then(|r| r.held_out.clone()),
        val_full: report.map(|r| r.full).unwrap_or_default(),
        params,
        run_dir: run.to_path_buf(),
        exported,
        samples_per_s: total_samples as f64 / t0.elapsed().as_secs_f64().max(1e-9),
        split,
        base_expert: base_name,
        margin,
    })
}

/// Files a training run writes into its directory.
pub const RUN_FILES: [&str; 15] = [
    "config.toml",
    DATA_FILE,
    SPLIT_FILE,
    "metrics.csv",
    "metrics.parquet",
    "curves.png",
    "curves.svg",
    "val.json",
    "val.log",
    "val_sheet.png",
    "val_sheet.svg",
    TB_DIR,
    "fusion.pt",
    "fusion.json",
    "ckpt",
];

/// The dataset a run trains on (`data.json`): a `--resume` over another dataset is refused, not continued.
pub const DATA_FILE: &str = "data.json";

/// What identifies a dataset for a run: its sample count and the manifest's row checksum (every sample id,
/// source, shard and index), so a copy of the same cache elsewhere resumes and any other dataset does not.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct DataIdentity {
    /// Where it was (informational: a moved copy is the same dataset).
    dir: String,
    samples: u64,
    rows_xxh3: String,
}

impl DataIdentity {
    fn of(ds: &Dataset) -> Result<DataIdentity> {
        let kv = srcache_formats::Manifest::read_metadata(&srcache_formats::Manifest::path_in(ds.dir()))?;
        let rows_xxh3 = kv.get("srcache.rows_xxh3").cloned().unwrap_or_default();
        Ok(DataIdentity { dir: ds.dir().display().to_string(), samples: ds.len() as u64, rows_xxh3 })
    }

    /// A resumed run must be on the dataset it recorded (a run from before this record is accepted).
    fn check(&self, run: &Path, resuming: bool) -> Result<()> {
        let path = run.join(DATA_FILE);
        if !resuming {
            return Ok(());
        }
        let text = match srcache_formats::read_regular_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TrainerError::Io { path, source: e }),
        };
        let was: DataIdentity =
            serde_json::from_str(&text).map_err(|e| TrainerError::RunDir { path: path.clone(), why: format!("unreadable dataset record: {e}") })?;
        if was.samples != self.samples || was.rows_xxh3 != self.rows_xxh3 {
            return Err(TrainerError::RunDir {
                path: run.to_path_buf(),
                why: format!(
                    "was trained on another dataset ({}: {} samples, manifest {}), not on {} ({} samples, manifest {}): resuming would \
                     continue on other data; train it in a new run directory (nothing was changed)",
                    was.dir, was.samples, was.rows_xxh3, self.dir, self.samples, self.rows_xxh3
                ),
            });
        }
        Ok(())
    }

    fn save(&self, run: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| TrainerError::Config { what: DATA_FILE.into(), why: e.to_string() })?;
        Ok(srcache_formats::write_atomic(&run.join(DATA_FILE), &json)?)
    }
}

/// The `source` of a validation table scored on training samples (a split that held no source out).
pub const TRAIN_SCORE_SOURCE: &str = "train samples (no held-out source)";

/// TensorBoard scalars of one logged step: the same numbers as its metrics.csv row.
pub fn train_scalars(r: &Row) -> Vec<(String, f64)> {
    let mut v = vec![("loss/total".to_string(), r.loss)];
    v.extend(r.parts.iter().map(|(n, x)| (format!("loss/{n}"), *x)));
    v.push(("train/lr".into(), r.lr));
    v.push(("train/grad_norm".into(), r.grad_norm));
    v.push(("train/steps_per_s".into(), r.steps_per_s));
    v.push(("train/samples_per_s".into(), r.samples_per_s));
    v
}

/// TensorBoard scalars of one validation: the selection metrics (metrics.csv's val columns) and every
/// table's rows, `val/<table>/psnr/<method>` and `.../ssim/<method>` (fused, each expert, bicubic).
pub fn val_scalars(r: &ValReport) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    v.extend(r.psnr().map(|x| ("val/psnr".to_string(), x)));
    v.extend(r.ssim().map(|x| ("val/ssim".to_string(), x)));
    v.extend(r.best_expert_psnr().map(|x| ("val/best_expert_psnr".to_string(), x)));
    for t in r.held_out.iter().chain(&r.full) {
        let table: String = t.source.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        for row in &t.rows {
            v.push((format!("val_{table}/psnr/{}", row.name), row.psnr));
            v.push((format!("val_{table}/ssim/{}", row.name), row.ssim));
        }
    }
    v
}

/// A new run needs a new or empty directory; an existing run is only continued with `resume` (starting over
/// means deleting it yourself: training never deletes checkpoints it was not asked to replace). A directory
/// holding anything else is refused, so a typo cannot scatter a run into a folder of other files.
fn claim_run_dir(run: &Path, resume: bool) -> Result<srcache_formats::OwnedDir> {
    if RUN.state(run).map_err(run_dir_error)? == srcache_formats::DirState::Ours && !resume {
        return Err(TrainerError::RunDir {
            path: run.to_path_buf(),
            why: "already holds a training run: add --resume to continue it, or choose a new run directory (nothing was changed)".into(),
        });
    }
    RUN.claim(run).map_err(run_dir_error)
}

/// What a run owns in its directory; locked on the directory itself (no lock file among the run's files).
const RUN: srcache_formats::Ownership = srcache_formats::Ownership {
    what: "training run",
    choose: "run directory",
    files: &RUN_FILES,
    dirs: &[TB_DIR, "ckpt"],
    dataset: false,
    parts: None,
    lock: srcache_formats::Lock::Folder,
};

/// Refusals of the run's folder keep the trainer's own "run directory <path>: ..." form.
fn run_dir_error(e: srcache_formats::FormatError) -> TrainerError {
    match e {
        srcache_formats::FormatError::Owned(o) if !matches!(o, srcache_formats::OwnedError::Io { .. }) => {
            TrainerError::RunDir { path: o.path().to_path_buf(), why: o.reason() }
        }
        e => e.into(),
    }
}

/// Deletes a training run's own files and its directory; refuses, deleting nothing, a directory holding
/// anything else or one another process is training into. What `srcache demo` uses to start its run over.
pub fn remove_run(run: &Path) -> Result<()> {
    RUN.remove(run).map_err(run_dir_error)
}

/// Appends to `<run>/val.log`: every validation's tables (val.json keeps only the last) and skipped images.
fn append_log(run: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let path = run.join("val.log");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    f.write_all(text.as_bytes()).map_err(io_err(&path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn remove_run_deletes_a_runs_own_files_and_refuses_foreign_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        remove_run(&run).unwrap(); // nothing there: nothing to do
        std::fs::create_dir_all(run.join("ckpt/step-10")).unwrap();
        std::fs::create_dir_all(run.join(TB_DIR)).unwrap();
        std::fs::write(run.join("ckpt/step-10/model.safetensors"), "w").unwrap();
        std::fs::write(run.join("config.toml"), "").unwrap();
        std::fs::write(run.join(SPLIT_FILE), "{}").unwrap();
        std::fs::write(run.join("notes.txt"), "mine").unwrap();
        let e = remove_run(&run).unwrap_err();
        assert!(matches!(&e, TrainerError::RunDir { .. }), "{e}");
        assert!(e.to_string().contains("holds files srcache did not write (notes.txt)"), "{e}");
        assert!(run.join("config.toml").exists() && run.join("ckpt/step-10/model.safetensors").exists(), "a refusal deletes nothing");
        std::fs::remove_file(run.join("notes.txt")).unwrap();
        // Refused while another process holds the run's lock (the trainer's claim).
        let held = claim_run_dir(&run, true).unwrap();
        assert!(remove_run(&run).unwrap_err().to_string().contains("another srcache process"));
        drop(held);
        remove_run(&run).unwrap();
        assert!(!run.exists());
    }
}
