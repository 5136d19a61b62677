//! `srcache bench fusion`: trains each fusion preset on one cache under the same budget (steps and/or
//! seconds of training) and prints one table on held-out full images: MATLAB bicubic, each expert, the
//! baselines of `srcache eval` (average, the best expert's ×8 self-ensemble, the least-squares blend, the
//! oracle bound) and each preset, with its gain over the best expert and over the self-ensemble, its
//! training wall time and samples/s. The experts run once per image; each preset then runs only its model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use srcache_experts::baselines::{self, Baselines};
use srcache_experts::benchmark::{BenchmarkFolder, BenchmarkImage};
use srcache_experts::evaluate::{baseline_scores, fuse_outputs, score, ImageResult, MATLAB_BICUBIC};
use srcache_experts::image::{image_to_tensor, tensor_to_image};
use srcache_experts::{ExpertOutputs, Fuser, FusionModule, SrStack, Tiling};
use srcache_formats::Dataset;
use srcache_trainer::config::PRESETS;
use srcache_trainer::TrainConfig;
use tch::Tensor;

#[derive(Args, Debug)]
pub struct BenchFusionArgs {
    /// The cache to train on (its schema names the experts and their sources).
    #[arg(long)]
    pub cache: PathBuf,
    /// Held-out benchmark folders (HR/ + optional LR_bicubic/X<scale>/), none of them in the cache (repeatable).
    #[arg(long = "val", required = true)]
    pub val: Vec<PathBuf>,
    /// Presets to train (repeatable; default: all of trainer/presets/).
    #[arg(long = "preset")]
    pub presets: Vec<String>,
    /// Training steps per preset (default: the preset's).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seconds of training per preset (0 = none): with --steps, whichever comes first.
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (training and the experts).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Torch intra-op threads on the CPU (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tile side in LR pixels for the experts on full images (as `srcache eval --tile`).
    #[arg(long, default_value_t = 192)]
    pub tile: i64,
    /// At most this many images per folder, first by name (0 = all).
    #[arg(long, default_value_t = 0)]
    pub max_images: usize,
    /// Keep the run directories here (default: a scratch folder, removed at the end).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One image with what does not change between presets.
struct Prepared {
    hr: RgbImage,
    lr: Tensor,
    srs: Vec<Tensor>,
    /// Per expert (name order): its full-image features, when it has any.
    feats: Vec<Option<Tensor>>,
}

#[derive(serde::Serialize)]
struct Row {
    method: String,
    psnr: f64,
    ssim: f64,
    /// Presets only: gain over the best expert and over its self-ensemble (dB), training wall time, samples/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    gain_best: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gain_x8: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    train_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    samples_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<u64>,
}

fn mean_rows(names: &[String], per_image: &[Vec<(f64, f64)>]) -> Vec<Row> {
    let n = per_image.len().max(1) as f64;
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let (p, s) = per_image.iter().fold((0.0, 0.0), |a, v| (a.0 + v[k].0, a.1 + v[k].1));
            Row { method: name.clone(), psnr: p / n, ssim: s / n, gain_best: None, gain_x8: None, train_s: None, samples_s: None, steps: None }
        })
        .collect()
}

pub fn run(a: BenchFusionArgs) -> Result<()> {
    let device = srcache_experts::parse_device(&a.device)?;
    if let Some(t) = a.threads {
        tch::set_num_threads(t as i32);
    }
    let presets: Vec<String> = if a.presets.is_empty() { PRESETS.iter().map(|(n, _)| n.to_string()).collect() } else { a.presets.clone() };
    let ds = Dataset::open(&a.cache).with_context(|| format!("opening cache {}", a.cache.display()))?;
    let schema = ds.schema().context("the cache has no shards")?.clone();
    // The cache's experts, as eval assembles them (name order: the fusion models' order).
    let stack = SrStack::assemble(Vec::new(), Some(&ds), None, device, Tiling { tile: a.tile, overlap: 16 })?;
    let names: Vec<String> = stack.experts.iter().map(|e| e.expert.name().to_string()).collect();
    let scale = stack.scale;

    // Experts once per image: their outputs (for the presets) and every fixed row's score.
    let t0 = Instant::now();
    let best = baselines::best_in_cache(&ds, &names);
    let blend = baselines::fit_blend(&ds, &names, 256).map_err(|e| eprintln!("note: no linear-blend row: {}", srcache_formats::error_chain(&e))).ok();
    let base = Baselines { average: names.len() >= 2, oracle: names.len() >= 2, self_ensemble: best, blend };
    let mut fixed_names: Vec<String> = vec![MATLAB_BICUBIC.to_string()];
    fixed_names.extend(names.iter().cloned());
    let mut images: Vec<Prepared> = Vec::new();
    let mut fixed: Vec<Vec<(f64, f64)>> = Vec::new();
    // Every expert's features that it has: each preset takes those its spec wants.
    let want: Vec<bool> = stack.experts.iter().map(|e| e.expert.has_feat()).collect();
    for dir in &a.val {
        let folder = BenchmarkFolder::scan(dir, scale, a.max_images)?;
        for s in &folder.skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
        for i in 0..folder.entries.len() {
            let img: BenchmarkImage = folder.load(i)?;
            let lr = image_to_tensor(&img.lr, tch::Device::Cpu)?;
            let _g = tch::no_grad_guard();
            let outs = stack.run(&lr, &want)?;
            let mut fi = outs.feats.into_iter();
            let feats: Vec<Option<Tensor>> = want.iter().map(|&w| if w { fi.next() } else { None }).collect();
            let srs = outs.srs;
            let experts: Vec<(String, RgbImage)> =
                names.iter().cloned().zip(srs.iter().map(tensor_to_image).collect::<srcache_experts::Result<Vec<_>>>()?).collect();
            let r = ImageResult { bicubic: srcache_ingest::resize::bicubic_up(&img.lr, scale), experts, fused: None, notes: Vec::new() };
            let mut m = vec![score(&r.bicubic, &img.hr, scale)];
            m.extend(r.experts.iter().map(|(_, e)| score(e, &img.hr, scale)));
            let extra = baseline_scores(&stack, &base, &r, &img)?;
            if images.is_empty() {
                fixed_names.extend(extra.iter().map(|(n, _)| n.clone()));
            }
            m.extend(extra.into_iter().map(|(_, v)| v));
            fixed.push(m);
            images.push(Prepared { hr: img.hr, lr, srs, feats });
        }
    }
    if images.is_empty() {
        bail!("no validation images in {:?}", a.val);
    }
    let mut rows = mean_rows(&fixed_names, &fixed);
    let best_row = rows.iter().filter(|r| names.contains(&r.method)).max_by(|x, y| x.psnr.total_cmp(&y.psnr)).map(|r| (r.method.clone(), r.psnr));
    let x8 = best.map(|i| baselines::self_ensemble_name(&names[i]));
    let x8_psnr = x8.as_ref().and_then(|n| rows.iter().find(|r| &r.method == n)).map(|r| r.psnr);
    println!(
        "bench fusion: cache {} ({} samples, experts {names:?}, halo {}), {} held-out images, experts + baselines in {:.0}s",
        a.cache.display(),
        ds.len(),
        schema.halo(),
        images.len(),
        t0.elapsed().as_secs_f64()
    );

    let scratch = tempfile::Builder::new().prefix("srcache-bench-fusion-").tempdir()?;
    let runs_root = a.runs.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    for name in &presets {
        let mut cfg = TrainConfig::from_preset(name, None)?;
        if let Some(s) = a.steps {
            cfg.steps = s;
        }
        cfg.time_limit_s = a.seconds;
        cfg.device = a.device.clone();
        cfg.threads = a.threads;
        cfg.val_every = 0;
        cfg.ckpt_every = 0;
        cfg.tensorboard = false;
        cfg.export = true;
        let run = runs_root.join(format!("run-{name}"));
        let t = Instant::now();
        let summary = srcache_trainer::train(&cfg, &a.cache, &run, false, &mut |_| {}).with_context(|| format!("training preset {name}"))?;
        let train_s = t.elapsed().as_secs_f64();
        let fusion = FusionModule::load(&run, device)?;
        let wants = fusion.spec().wants_feat();
        let mut per = Vec::with_capacity(images.len());
        for img in &images {
            let feats: Vec<Tensor> =
                img.feats.iter().zip(&wants).filter(|(_, w)| **w).filter_map(|(f, _)| f.as_ref().map(Tensor::shallow_clone)).collect();
            let outs = ExpertOutputs { srs: img.srs.iter().map(Tensor::shallow_clone).collect(), feats, notes: Vec::new() };
            let fused = tensor_to_image(&fuse_outputs(&fusion, &img.lr, &outs)?)?;
            per.push(vec![score(&fused, &img.hr, scale)]);
        }
        let mut row = mean_rows(&[format!("preset:{name}")], &per).remove(0);
        row.gain_best = best_row.as_ref().map(|(_, p)| row.psnr - p);
        row.gain_x8 = x8_psnr.map(|p| row.psnr - p);
        row.train_s = Some(train_s);
        row.samples_s = Some(summary.samples_per_s);
        row.steps = Some(summary.steps);
        rows.push(row);
    }

    let w = rows.iter().map(|r| r.method.chars().count()).max().unwrap_or(0).max(16);
    println!(
        "{:<w$} {:>9} {:>8} {:>10} {:>10} {:>8} {:>9} {:>7}",
        "method", "PSNR(Y)", "SSIM(Y)", "vs best", "vs x8", "train s", "samples/s", "steps"
    );
    let opt = |v: Option<f64>, p: usize| v.map(|x| format!("{x:+.p$}")).unwrap_or_default();
    for r in &rows {
        println!(
            "{:<w$} {:>9.3} {:>8.4} {:>10} {:>10} {:>8} {:>9} {:>7}",
            r.method,
            r.psnr,
            r.ssim,
            opt(r.gain_best, 3),
            opt(r.gain_x8, 3),
            r.train_s.map(|x| format!("{x:.0}")).unwrap_or_default(),
            r.samples_s.map(|x| format!("{x:.1}")).unwrap_or_default(),
            r.steps.map(|x| x.to_string()).unwrap_or_default()
        );
    }
    if let Some((b, p)) = &best_row {
        println!("best expert: {b} ({p:.3} dB){}", x8.as_ref().map(|n| format!("; self-ensemble row: {n}")).unwrap_or_default());
    }
    if let Some(p) = &a.json {
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&serde_json::json!({"cache": a.cache, "val": a.val, "rows": rows}))?)?;
    }
    Ok(())
}
