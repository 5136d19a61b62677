//! The loader benchmark's work (`srcache bench loader`): the shard loader against the usual baseline (one fp32 torch archive per sample,
//! read by worker threads with the same crop + flips), and training step time fed by the loader against
//! synthetic in-memory batches. Every benchmark lives under tools/src/bench/, next to the command that prints it.

use anyhow::{anyhow, Context, Result};
use half::f16;
use rand::{Rng, SeedableRng};
use srcache_formats::{Codec, DType, Dataset, DatasetOptions, DatasetWriter, PatchBox, SampleMeta, Schema, TensorSpec};
use srcache_trainer::error::TorchCtx;
use srcache_trainer::train::{MemorySource, Trainer};
use srcache_trainer::{Batch, Loader, LoaderConfig, LoaderPosition, TrainConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct LoaderBenchConfig {
    pub dir: PathBuf,
    pub samples: usize,
    pub batch_size: usize,
    pub workers: usize,
    pub batches: usize,
    /// LR patch side of the cached samples (HR = 4×).
    pub lr: usize,
    pub crop: Option<u32>,
    pub codec: Codec,
    pub train_steps: usize,
    /// Device of the training-step comparison (`cpu`, `cuda:0`).
    pub train_device: String,
    pub train_batch: usize,
    pub train_crop: u32,
}

impl Default for LoaderBenchConfig {
    fn default() -> Self {
        Self {
            dir: std::env::temp_dir().join("srcache-bench-loader"),
            samples: 48,
            batch_size: 8,
            workers: 2,
            batches: 24,
            lr: 64,
            crop: None,
            codec: Codec::Raw,
            train_steps: 12,
            train_device: "cpu".into(),
            train_batch: 2,
            train_crop: 32,
        }
    }
}

pub const EXPERTS: [(&str, usize); 3] = [("hat", 180), ("swinir", 180), ("rrdb", 64)];

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoaderBenchReport {
    /// Codec of the sr/feat tensors in the shards.
    pub codec: Codec,
    pub sample_mb_f16: f64,
    /// Default loader: batches in the stored dtypes (u8 lr/hr, f16 sr/feat), converted on the device.
    pub loader_samples_s: f64,
    pub loader_gb_s: f64,
    /// Default loader, first epoch of a freshly opened dataset (checksums verified on this first read).
    pub first_epoch_samples_s: f64,
    /// The loader converting everything to f32 on the CPU, as the baseline does.
    pub loader_f32_samples_s: f64,
    pub loader_f32_gb_s: f64,
    pub baseline_samples_s: f64,
    pub baseline_gb_s: f64,
    pub ratio: f64,
    pub step_loader_ms: f64,
    pub step_synthetic_ms: f64,
    pub step_ratio: f64,
}

impl std::fmt::Display for LoaderBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sample: 3 experts, sr f16 3x256x256, feat f16 180/180/64x64x64, lr+hr u8; sr/feat codec {} ({:.2} MB stored)",
            self.codec, self.sample_mb_f16
        )?;
        writeln!(f, "loader, stored dtypes (default): {:>6.1} samples/s  {:>6.2} GB/s delivered (u8/f16)", self.loader_samples_s, self.loader_gb_s)?;
        writeln!(
            f,
            "  first epoch, checksums verified: {:>5.1} samples/s  (ratio {:.2}x)",
            self.first_epoch_samples_s,
            self.first_epoch_samples_s / self.baseline_samples_s
        )?;
        writeln!(
            f,
            "loader, f32 on the CPU:         {:>7.1} samples/s  {:>6.2} GB/s delivered (f32)",
            self.loader_f32_samples_s, self.loader_f32_gb_s
        )?;
        writeln!(f, "baseline (fp32 archive/sample): {:>7.1} samples/s  {:>6.2} GB/s delivered (f32)", self.baseline_samples_s, self.baseline_gb_s)?;
        writeln!(
            f,
            "ratio loader/baseline:          {:>7.2}x  (goal >= 5x; f32 loader: {:.2}x)",
            self.ratio,
            self.loader_f32_samples_s / self.baseline_samples_s
        )?;
        writeln!(f, "train step fed by loader:       {:>7.1} ms", self.step_loader_ms)?;
        writeln!(f, "train step, in-memory batches:  {:>7.1} ms", self.step_synthetic_ms)?;
        write!(f, "step time ratio:                {:>7.3}x  (goal <= 1.05x)", self.step_ratio)
    }
}

fn smooth(rng: &mut impl Rng, c: usize, h: usize, w: usize, f: impl Fn(usize, f32) -> f32) -> Vec<f32> {
    let (gx, gy, b): (f32, f32, f32) = (rng.gen_range(-0.002..0.002), rng.gen_range(-0.002..0.002), rng.gen_range(0.3..0.7));
    let mut v = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                v.push(f(ch, b + gx * x as f32 + gy * y as f32 + 0.05 * ((x * 7 + y * 13 + ch) % 17) as f32 / 17.0));
            }
        }
    }
    v
}

/// Writes the shard dataset and the baseline's per-sample fp32 archives (same values) into `cfg.dir`.
pub fn write_realistic(cfg: &LoaderBenchConfig) -> Result<(PathBuf, Vec<PathBuf>)> {
    let (h, hh) = (cfg.lr, cfg.lr * 4);
    let shards = cfg.dir.join("shards");
    let base = cfg.dir.join("baseline");
    for d in [&shards, &base] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut specs = vec![TensorSpec::new("lr", DType::U8, &[3, h, h], Codec::Raw), TensorSpec::new("hr", DType::U8, &[3, hh, hh], Codec::Raw)];
    for (e, c) in EXPERTS {
        specs.push(TensorSpec::new(format!("sr/{e}"), DType::F16, &[3, hh, hh], cfg.codec));
        specs.push(TensorSpec::new(format!("feat/{e}"), DType::F16, &[c, h, h], cfg.codec));
    }
    let mut schema = Schema::new(specs);
    schema.attrs.insert("scale".into(), "4".into());
    let (mut w, _) = DatasetWriter::create_or_resume(&shards, schema, DatasetOptions { target_shard_bytes: 256 << 20 })?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut archives = Vec::new();
    for i in 0..cfg.samples {
        let lr = smooth(&mut rng, 3, h, h, |_, v| v);
        let hr = smooth(&mut rng, 3, hh, hh, |_, v| v);
        let q = |v: &[f32]| v.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect::<Vec<u8>>();
        let (lr8, hr8) = (q(&lr), q(&hr));
        let mut raws: Vec<Vec<u8>> = vec![lr8.clone(), hr8.clone()];
        let mut named: Vec<(String, Tensor)> = vec![
            ("lr".into(), Tensor::f_from_slice(&lr8)?.f_view([3, h as i64, h as i64])?.f_to_kind(Kind::Float)? / 255.0),
            ("hr".into(), Tensor::f_from_slice(&hr8)?.f_view([3, hh as i64, hh as i64])?.f_to_kind(Kind::Float)? / 255.0),
        ];
        for (e, c) in EXPERTS {
            let sr: Vec<f16> = hr.iter().map(|v| f16::from_f32(v * 0.98)).collect();
            let ft: Vec<f16> = smooth(&mut rng, c, h, h, |ch, v| v * (1 + ch % 5) as f32).into_iter().map(f16::from_f32).collect();
            for (name, v, shape) in [(format!("sr_{e}"), &sr, [3, hh, hh]), (format!("feat_{e}"), &ft, [c, h, h])] {
                let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
                named.push((name, Tensor::f_from_slice(&f)?.f_view([shape[0] as i64, shape[1] as i64, shape[2] as i64])?));
                raws.push(v.iter().flat_map(|x| x.to_le_bytes()).collect());
            }
        }
        let meta = SampleMeta {
            id: format!("b{i:05}"),
            source: format!("img{i:05}.png"),
            patch: PatchBox { x: 0, y: 0, w: h as u32, h: h as u32 },
            variant: "clean".into(),
            psnr: Default::default(),
        };
        let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
        w.write(&meta, &refs)?;
        let p = base.join(format!("{i:05}.pt"));
        Tensor::save_multi(&named, &p).ctx("save_multi")?;
        archives.push(p);
    }
    w.finish()?;
    Ok((shards, archives))
}

/// The baseline: worker threads `load_multi` one fp32 archive per sample, apply the same crop and a dihedral
/// transform with torch ops, and stack batches.
/// The fp32-archive baseline: `batches` batches from `cfg.workers` threads; (seconds, bytes delivered).
pub(crate) fn baseline(archives: &[PathBuf], cfg: &LoaderBenchConfig, batches: usize) -> Result<(f64, u64)> {
    let workers = cfg.workers.max(1);
    let bs = cfg.batch_size;
    let t0 = Instant::now();
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> Result<u64> {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
                    let mut bytes = 0u64;
                    for b in (w..batches).step_by(workers) {
                        let mut cols: Vec<Vec<Tensor>> = Vec::new();
                        for k in 0..bs {
                            let p = &archives[(b * bs + k) % archives.len()];
                            let ts = Tensor::load_multi(p).ctx("load_multi")?;
                            let d: u8 = rng.gen_range(0..8);
                            let lr_side = ts[0].1.size()[1];
                            let c = cfg.crop.map(|c| c as i64).unwrap_or(lr_side);
                            let (y0, x0) = (rng.gen_range(0..=lr_side - c), rng.gen_range(0..=lr_side - c));
                            if cols.is_empty() {
                                cols = (0..ts.len()).map(|_| Vec::new()).collect();
                            }
                            for (j, (_, t)) in ts.iter().enumerate() {
                                let r = t.size()[1] / lr_side;
                                let mut x = t.f_narrow(1, y0 * r, c * r)?.f_narrow(2, x0 * r, c * r)?;
                                if d & 1 != 0 {
                                    x = x.f_flip([2])?;
                                }
                                if d & 2 != 0 {
                                    x = x.f_flip([1])?;
                                }
                                if d & 4 != 0 {
                                    x = x.f_transpose(1, 2)?;
                                }
                                cols[j].push(x);
                            }
                        }
                        for col in &cols {
                            let st = Tensor::f_stack(col, 0)?.f_contiguous()?;
                            bytes += st.numel() as u64 * 4;
                        }
                    }
                    Ok(bytes)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("baseline worker panicked")))).collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok((t0.elapsed().as_secs_f64(), total))
}

fn loader_run(ds: &Arc<Dataset>, cfg: &LoaderBenchConfig, batches: usize, stored_dtype: bool) -> Result<(f64, u64)> {
    let lc = LoaderConfig { batch_size: cfg.batch_size, crop: cfg.crop, workers: cfg.workers, prefetch: 2, stored_dtype, ..Default::default() };
    let t0 = Instant::now();
    let mut l = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default())?;
    let mut bytes = 0;
    for _ in 0..batches {
        bytes += l.next_batch()?.bytes();
    }
    Ok((t0.elapsed().as_secs_f64(), bytes))
}

pub fn run(cfg: &LoaderBenchConfig, log: &mut dyn FnMut(&str)) -> Result<LoaderBenchReport> {
    log(&format!("writing {} samples (shards + fp32 archives) under {}", cfg.samples, cfg.dir.display()));
    let (shards, archives) = write_realistic(cfg)?;
    let ds = Arc::new(Dataset::open(&shards)?);
    let stored: u64 = ds.manifest().iter().map(|r| r.bytes).sum();
    // Data-loading workers run torch single-threaded (as PyTorch's DataLoader workers do): otherwise OpenMP's
    // spinning intra-op threads steal the 2 cores from the workers on both sides.
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    // First epoch of the just-opened dataset: every payload's checksum is verified on this first read (later
    // epochs re-read verified payloads, which is what the timed rounds below measure).
    let epoch_batches = (ds.len() / cfg.batch_size).max(1);
    let (t_first, _) = loader_run(&ds, cfg, epoch_batches, true)?;
    let first_epoch_samples_s = (epoch_batches * cfg.batch_size) as f64 / t_first;
    // Warm every path once (page cache, allocator) before timing; then best of 3 rounds, interleaved so a
    // noisy neighbour on the VM hits all sides alike.
    loader_run(&ds, cfg, 2, true)?;
    loader_run(&ds, cfg, 2, false)?;
    baseline(&archives, cfg, 2)?;
    let (mut tl, mut bl, mut tf, mut bf, mut tb, mut bb) = (f64::MAX, 0, f64::MAX, 0, f64::MAX, 0);
    for round in 0..3 {
        let (t, b) = loader_run(&ds, cfg, cfg.batches, true)?;
        (tl, bl) = if t < tl { (t, b) } else { (tl, bl) };
        let (t, b) = loader_run(&ds, cfg, cfg.batches, false)?;
        (tf, bf) = if t < tf { (t, b) } else { (tf, bf) };
        let (t, b) = baseline(&archives, cfg, cfg.batches)?;
        (tb, bb) = if t < tb { (t, b) } else { (tb, bb) };
        log(&format!("round {round}: {} batches: loader {tl:.3}s, f32 loader {tf:.3}s, baseline {tb:.3}s (best so far)", cfg.batches));
    }
    let n = (cfg.batches * cfg.batch_size) as f64;
    tch::set_num_threads(threads);

    // Training step time: default fusion model, fed by the loader vs by the same batches held in memory.
    let mut tc = TrainConfig { device: cfg.train_device.clone(), steps: cfg.train_steps as u64 + 2, ..Default::default() };
    let device = tc.device()?;
    // As the trainer does on CUDA: the loader's workers hand over batches already in pinned memory.
    let pin_device = device.is_cuda().then_some(device);
    let lc = LoaderConfig {
        batch_size: cfg.train_batch,
        crop: Some(cfg.train_crop),
        workers: cfg.workers.max(1),
        prefetch: 2,
        pin_device,
        ..Default::default()
    };
    let mut loader = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default())?;
    tc.model.experts = loader.experts.clone();
    tc.model.feat_channels = loader.feat_channels.clone();
    // The in-memory baseline holds its batches where the model is (on the GPU when training there): a step
    // fed by it pays no data cost at all, so the ratio is exactly what the loader adds.
    // Deep copies: the in-memory side owns its batches outright.
    let on_device = |b: Batch| b.try_map(|t| t.copy().f_to_device(device)).map_err(anyhow::Error::from);
    let mut mem = MemorySource {
        batches: (0..4).map(|_| loader.next_batch().map_err(anyhow::Error::from).and_then(on_device)).collect::<Result<_>>()?,
        next: 0,
    };
    // Per-step times, loader-fed and in-memory steps alternating on two identical trainers, medians compared:
    // a background hiccup on the VM then lands on both sides instead of on whichever ran during it.
    let mut tr_loader = Trainer::new(&tc)?;
    let mut tr_mem = Trainer::new(&tc)?;
    tr_loader.train_step(&mut loader)?;
    tr_mem.train_step(&mut mem)?;
    let (mut ld_ms, mut syn_ms) = (Vec::new(), Vec::new());
    for _ in 0..cfg.train_steps {
        let t0 = Instant::now();
        tr_loader.train_step(&mut loader)?;
        ld_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t0 = Instant::now();
        tr_mem.train_step(&mut mem)?;
        syn_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ld, syn) = (median(&mut ld_ms), median(&mut syn_ms));
    log(&format!("train step (median of {}): loader {ld:.1} ms, in-memory {syn:.1} ms", cfg.train_steps));
    Ok(LoaderBenchReport {
        codec: cfg.codec,
        sample_mb_f16: stored as f64 / ds.len().max(1) as f64 / 1e6,
        loader_samples_s: n / tl,
        loader_gb_s: bl as f64 / tl / 1e9,
        first_epoch_samples_s,
        loader_f32_samples_s: n / tf,
        loader_f32_gb_s: bf as f64 / tf / 1e9,
        baseline_samples_s: n / tb,
        baseline_gb_s: bb as f64 / tb / 1e9,
        ratio: tb / tl,
        step_loader_ms: ld,
        step_synthetic_ms: syn,
        step_ratio: ld / syn,
    })
}
