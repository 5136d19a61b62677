//! `srcache train --config train.toml --data DIR --out RUNDIR [--resume]`: fusion training over a cache.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use srcache_trainer::{train, TrainConfig};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training config (TOML; missing fields take their defaults). Without it, defaults are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start from a built-in preset (trainer/presets/NAME.toml: gating, refine, select); a --config given too
    /// is applied on top of it.
    #[arg(long)]
    pub preset: Option<String>,
    /// Cached dataset directory (shards + manifest.parquet).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: checkpoints, metrics.csv, metrics.parquet, curves.png/.svg, val.json, val.log,
    /// val_sheet.png/.svg, TensorBoard events (tb/; `tensorboard = false` in the config turns them off), fusion.pt.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the run directory's latest checkpoint (same loss curve as an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    /// Override the config's step count.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override the config's device ("cpu", "cuda", "cuda:N", "auto").
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = match (&a.preset, &a.config) {
        (Some(name), over) => TrainConfig::from_preset(name, over.as_deref())?,
        (None, Some(p)) => TrainConfig::from_toml_file(p)?,
        (None, None) => TrainConfig::default(),
    };
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(d) = &a.device {
        cfg.device = d.clone();
    }
    // Every number range-checked, naming the config file, before anything is opened or written.
    cfg.validate(&a.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into()))?;
    let pb = ProgressBar::new(cfg.steps);
    // One rate, the trainer's (training time only, validation and checkpoints left out): indicatif's own
    // {per_sec} counted wall time and disagreed with it.
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps eta {eta} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    pb.enable_steady_tick(Duration::from_millis(500));
    let mut last_val = None;
    let summary = train(&cfg, &a.data, &a.out, a.resume, &mut |row| {
        pb.set_position(row.step);
        last_val = row.val_psnr.or(last_val);
        let val = last_val.map(|v| format!(" val {v:.2} dB")).unwrap_or_default();
        pb.set_message(format!("loss {:.5} lr {:.2e} {:.2} steps/s {:.1} samples/s{val}", row.loss, row.lr, row.steps_per_s, row.samples_per_s));
    })
    .with_context(|| format!("training on {}", a.data.display()))?;
    pb.finish();
    println!(
        "run {}: {} steps, final loss {:.5}, {} params, {:.1} samples/s",
        summary.run_dir.display(),
        summary.steps,
        summary.final_loss,
        summary.params,
        summary.samples_per_s
    );
    let sp = &summary.split;
    println!(
        "split by source image (seed {}, val_fraction {}; also {}/split.json): {} held out of {}: {}",
        sp.seed,
        sp.fraction,
        summary.run_dir.display(),
        sp.held_out.len(),
        sp.held_out.len() + sp.train_sources.len(),
        if sp.held_out.is_empty() { "none".to_string() } else { sp.held_out.join(", ") }
    );
    println!("the head started at expert {} (the config's delta_expert)", summary.base_expert);
    // Each table ends with the fused − best-expert margin.
    for v in summary.val.iter().chain(&summary.val_full) {
        print!("{v}");
    }
    if let Some((on, best, d)) = &summary.margin {
        println!("fused - best expert ({best}) on {on}: {d:+.3} dB (full images preferred when val_dirs are given)");
    }
    if let Some(p) = &summary.exported {
        println!("TorchScript fusion model: {}", p.display());
    }
    Ok(())
}
