//! `srcache bench fidelity`: what lossy cache storage costs the model trained on it. From one input and one
//! expert set it builds the lossless cache and each compact variant, trains the same fusion model (same seed,
//! same steps) on each, evaluates every model on the same held-out full images, and prints per variant: bytes
//! per sample, the ratio against one fp32 `torch.save`-style archive per sample (lr, hr, every sr and full
//! feature map), loader samples/s, and Δ fused PSNR/SSIM against the lossless run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use srcache_cache::{CacheConfig, ExpertConfig, InputConfig, NoProgress, RunOptions};
use srcache_experts::{Builtin, ExpertSource, ExpertSpec};
use srcache_formats::{DType, Dataset};
use srcache_trainer::{Loader, LoaderConfig, LoaderPosition};
use tch::Tensor;

#[derive(Args, Debug)]
pub struct BenchFidelityArgs {
    /// Experts as NAME=builtin:KIND or NAME=FILE.pt (repeatable; default: the three built-ins). The real ones:
    /// scripts/real-experts.sh, then --expert anime=.experts/animevideov3.pt --expert rrdb=.experts/x4plus_anime.pt
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    /// HR photos to cache, train on and evaluate on (default: the built-in photos).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Stem of a photo to hold out for evaluation, never trained on (repeatable). Default: chelsea and rocket
    /// when --photos has them, else the last fifth of the photos by name.
    #[arg(long = "held-out", value_name = "STEM")]
    pub held_out: Vec<String>,
    /// Variants to run (default: all), lossless first: lossless (f16 sr and features, = cache --lossless),
    /// default (the cache's default storage: u8 sr), feat-u8 (= --feat-u8: affine_u8_zstd), feat-u8-raw
    /// (affine_u8, no zstd), sr-u8 (= --sr-u8), sr-u8+feat-u8, pca-999, pca-16, sr-u8+pca-999, sr-u8+pca-16,
    /// sr-u8+pca-8. Parts join with `+` on top of lossless; pca-K keeps K components (= --feat-pca K), pca-999
    /// 99.9% of the variance (= --feat-pca 0.999).
    #[arg(long = "variant")]
    pub variants: Vec<String>,
    /// Fusion training steps per variant.
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// LR patch side of the caches.
    #[arg(long, default_value_t = 32)]
    pub patch: u32,
    /// Distance between patch origins in LR pixels. Overlapping (16 < 32) by default so that a few training
    /// photos give enough samples; `srcache cache` itself defaults to the patch size.
    #[arg(long, default_value_t = 16)]
    pub stride: u32,
    /// Where to make the scratch folder (default: the system temp dir); removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The variants run by default: `srcache_cache::StoragePreset` names (the cache's flags under other spellings
/// would make two names for one setting).
const ALL: [&str; 11] =
    ["lossless", "default", "feat-u8-raw", "feat-u8", "sr-u8", "sr-u8+feat-u8", "pca-999", "pca-16", "sr-u8+pca-999", "sr-u8+pca-16", "sr-u8+pca-8"];

#[derive(serde::Serialize)]
struct Row {
    variant: String,
    samples: u64,
    bytes_per_sample: f64,
    ratio_vs_fp32_archive: f64,
    loader_samples_s: f64,
    loader_vs_archive: f64,
    fused_psnr: f64,
    fused_ssim: f64,
    delta_psnr: f64,
    delta_ssim: f64,
}

/// Mean size of one fp32 `torch.save`-style archive per sample (every tensor of the lossless cache as f32,
/// u8 images scaled to [0,1], features at all their channels), over the first `n` samples.
fn archive_bytes(ds: &Dataset, dir: &Path, n: usize) -> Result<(f64, Vec<PathBuf>)> {
    let names: Vec<String> = ds.schema().context("empty dataset")?.tensors.iter().map(|t| t.name.clone()).collect();
    let n = n.min(ds.len()).max(1);
    let mut total = 0u64;
    let mut paths = Vec::with_capacity(n);
    for g in 0..n {
        let (s, i) = ds.sample(g)?;
        let mut named = Vec::new();
        for (t, name) in names.iter().enumerate() {
            let v = s.tensor_at(i, t)?;
            let shape: Vec<i64> = v.spec().shape.iter().map(|&d| d as i64).collect();
            let mut vals = v.to_f32()?;
            if v.spec().dtype == DType::U8 {
                vals.iter_mut().for_each(|x| *x /= 255.0);
            }
            named.push((name.replace('/', "_"), Tensor::f_from_slice(&vals)?.f_reshape(shape)?));
        }
        let p = dir.join(format!("archive-{g}.pt"));
        Tensor::save_multi(&named, &p)?;
        total += std::fs::metadata(&p)?.len();
        paths.push(p);
    }
    Ok((total as f64 / n as f64, paths))
}

/// Batches of 8 from 2 workers, as `bench loader` times both sides; torch single-threaded meanwhile (as in
/// PyTorch's DataLoader workers), so neither side's intra-op threads steal the cores from the workers.
const LOADER: (usize, usize) = (8, 2);

/// Samples/s of the `bench loader` baseline (one fp32 archive per sample, `Tensor::load_multi`, the same flips
/// and stacking) over the archives of the lossless cache: what each variant's loader speed is compared with.
fn archive_loader_speed(archives: &[PathBuf], batches: usize) -> Result<f64> {
    let cfg = super::loader_lib::LoaderBenchConfig { batch_size: LOADER.0, workers: LOADER.1, crop: None, ..Default::default() };
    one_torch_thread(|| {
        super::loader_lib::baseline(archives, &cfg, 2)?;
        let (t, _) = super::loader_lib::baseline(archives, &cfg, batches)?;
        Ok((batches * LOADER.0) as f64 / t)
    })
}

/// Runs `f` with torch's intra-op threads at 1, restoring the previous count afterwards.
fn one_torch_thread<T>(f: impl FnOnce() -> T) -> T {
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let r = f();
    tch::set_num_threads(threads);
    r
}

/// Samples/s of the default loader (stored dtypes) over the dataset, after a warm-up epoch.
fn loader_speed(dir: &Path) -> Result<(f64, usize)> {
    let ds = Arc::new(Dataset::open(dir)?);
    let cfg = LoaderConfig { batch_size: LOADER.0, workers: LOADER.1, ..Default::default() };
    one_torch_thread(|| -> Result<(f64, usize)> {
        let mut l = Loader::new(ds.clone(), (0..ds.len()).collect(), &cfg, LoaderPosition::default())?;
        let per_epoch = (ds.len() / LOADER.0).max(1);
        for _ in 0..per_epoch {
            l.next_batch()?;
        }
        // At least ~1 s of batches: a short window swings 2x between runs.
        let batches = (2 * per_epoch).max(200);
        let t0 = Instant::now();
        for _ in 0..batches {
            l.next_batch()?;
        }
        Ok(((batches * LOADER.0) as f64 / t0.elapsed().as_secs_f64(), batches))
    })
}

pub fn run(a: BenchFidelityArgs) -> Result<()> {
    let parent = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let scratch = tempfile::Builder::new().prefix("srcache-bench-fidelity-").tempdir_in(&parent)?;
    let root = scratch.path();
    let photos = match &a.photos {
        Some(p) => p.clone(),
        None => srcache_ingest::photos::extract(&root.join("photos"))?,
    };
    let split = srcache_experts::benchmark::hold_out_photos(&photos, root, a.scale, &a.held_out, &["chelsea", "rocket"])?;
    println!("{split}");
    let (train, bench) = (split.train, split.bench);
    let experts: Vec<(String, ExpertSource)> = if a.experts.is_empty() {
        Builtin::ALL.iter().map(|b| (b.as_str().to_string(), ExpertSource::Builtin(*b))).collect()
    } else {
        a.experts.iter().map(|s| s.parse::<ExpertSpec>().map(|e| (e.name, e.source))).collect::<Result<_, _>>()?
    };
    let variants: Vec<String> = if a.variants.is_empty() { ALL.iter().map(|s| s.to_string()).collect() } else { a.variants.clone() };
    if variants.first().map(String::as_str) != Some("lossless") {
        bail!("the first variant must be lossless (the reference the others are compared with)");
    }
    println!(
        "bench fidelity: experts {:?}, x{}, patch {} stride {}, {} steps per variant, held out: {}",
        experts.iter().map(|e| &e.0).collect::<Vec<_>>(),
        a.scale,
        a.patch,
        a.stride,
        a.steps,
        bench.display()
    );
    let mut rows: Vec<Row> = Vec::new();
    let (mut archive, mut archive_sps) = (0.0, 0.0);
    for name in &variants {
        let t0 = Instant::now();
        let mut cfg = CacheConfig {
            input: InputConfig { hr_dir: train.clone(), scale: a.scale, patch: a.patch, stride: Some(a.stride), ..Default::default() },
            experts: experts
                .iter()
                .map(|(n, s)| match s {
                    ExpertSource::Builtin(b) => ExpertConfig::builtin(n, *b),
                    ExpertSource::TorchScript(p) => ExpertConfig::torchscript(n, p),
                })
                .collect(),
            out: root.join(format!("cache-{}", name.replace('+', "_"))),
            devices: "cpu".into(),
            batch: 16,
            target_shard_bytes: 64 << 20,
            ..Default::default()
        };
        let preset: srcache_cache::StoragePreset = name.parse()?;
        cfg.experts.iter_mut().for_each(|e| preset.apply(e));
        let summary = srcache_cache::run_with(&cfg, &RunOptions::default(), &NoProgress)?;
        let ds = Dataset::open(&cfg.out)?;
        let bytes_per_sample = summary.bytes as f64 / summary.samples.max(1) as f64;
        let (loader, batches) = loader_speed(&cfg.out)?;
        if rows.is_empty() {
            let archives;
            (archive, archives) = archive_bytes(&ds, root, 16)?;
            archive_sps = archive_loader_speed(&archives, batches)?;
            println!("fp32 archive per sample: {:.1} KiB, its loader (the baseline): {archive_sps:.1} samples/s", archive / 1024.0);
        }
        let run_dir = root.join(format!("run-{}", name.replace('+', "_")));
        let tcfg = srcache_trainer::TrainConfig::demo(a.steps, a.scale, &bench);
        let ts = srcache_trainer::train(&tcfg, &cfg.out, &run_dir, false, &mut |_| {})?;
        let full = ts.val_full.first().context("no full-image validation table")?;
        let (psnr, ssim) = (full.fused().psnr, full.fused().ssim);
        let (dp, ds_) = rows.first().map(|r| (psnr - r.fused_psnr, ssim - r.fused_ssim)).unwrap_or((0.0, 0.0));
        let row = Row {
            variant: name.clone(),
            samples: summary.samples,
            bytes_per_sample,
            ratio_vs_fp32_archive: archive / bytes_per_sample.max(1.0),
            loader_samples_s: loader,
            loader_vs_archive: loader / archive_sps.max(1e-9),
            fused_psnr: psnr,
            fused_ssim: ssim,
            delta_psnr: dp,
            delta_ssim: ds_,
        };
        println!(
            "{:<16} {:>9.1} KiB/sample {:>6.2}x vs fp32 archive  loader {:>7.1} samples/s ({:.1}x)  fused {:.3} dB / {:.4}  Δ {:+.3} dB / {:+.4}  ({:.0}s)",
            row.variant,
            row.bytes_per_sample / 1024.0,
            row.ratio_vs_fp32_archive,
            row.loader_samples_s,
            row.loader_vs_archive,
            row.fused_psnr,
            row.fused_ssim,
            row.delta_psnr,
            row.delta_ssim,
            t0.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    let best5 = rows
        .iter()
        .filter(|r| r.ratio_vs_fp32_archive >= 5.0 && r.delta_psnr >= -0.02)
        .max_by(|x, y| x.ratio_vs_fp32_archive.total_cmp(&y.ratio_vs_fp32_archive));
    let best8 = rows.iter().filter(|r| r.ratio_vs_fp32_archive >= 8.0).max_by(|x, y| x.delta_psnr.total_cmp(&y.delta_psnr));
    match best5 {
        Some(r) => println!("goal (>= 5x at <= 0.02 dB): met by {} ({:.2}x, {:+.3} dB)", r.variant, r.ratio_vs_fp32_archive, r.delta_psnr),
        None => println!("goal (>= 5x at <= 0.02 dB): not met by any variant"),
    }
    if let Some(r) = best8 {
        println!(">= 8x: best is {} ({:.2}x, {:+.3} dB)", r.variant, r.ratio_vs_fp32_archive, r.delta_psnr);
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({"experts": experts.iter().map(|e| format!("{}={}", e.0, e.1)).collect::<Vec<_>>(), "steps": a.steps,
            "patch": a.patch, "stride": a.stride, "scale": a.scale, "fp32_archive_bytes_per_sample": archive, "fp32_archive_loader_samples_s": archive_sps, "variants": rows});
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&j)?)?;
    }
    Ok(())
}
