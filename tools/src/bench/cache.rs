//! `srcache bench cache`: end-to-end cache pipeline throughput against the experts' forward pass alone on
//! the same device (goal on GPU: pipeline ≥ 90% of forward-only).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use srcache_cache::{parse_devices, CacheConfig, NoProgress};

use crate::cmd_cache::{build_config, CacheArgs};

#[derive(Args, Debug)]
pub struct BenchCacheArgs {
    /// HR images (default: the five photos built into the binary).
    #[arg(long)]
    pub hr: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    #[arg(long, default_value_t = 32)]
    pub patch: u32,
    /// Experts as in `srcache cache` (default: the three built-ins).
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Samples through the pipeline.
    #[arg(long, default_value_t = 1024)]
    pub samples: u64,
    #[arg(long)]
    pub fp16: bool,
}

pub fn run(a: BenchCacheArgs) -> anyhow::Result<()> {
    let experts = if a.experts.is_empty() {
        vec!["bicubic=builtin:bicubic".into(), "lanczos3=builtin:lanczos3".into(), "sharp=builtin:sharp_bicubic".into()]
    } else {
        a.experts.clone()
    };
    // A scratch folder of its own (unique per process), removed at the end.
    let scratch = tempfile::Builder::new().prefix("srcache-bench-cache-").tempdir()?;
    let out = scratch.path().join("cache");
    let hr = match &a.hr {
        Some(h) => h.clone(),
        None => srcache_ingest::photos::extract(&scratch.path().join("photos"))?,
    };
    let cache_args = CacheArgs {
        config: None,
        hr: Some(hr),
        lr: None,
        scale: Some(a.scale),
        patch: Some(a.patch),
        stride: None,
        experts,
        out: Some(out.clone()),
        devices: Some(a.devices.clone()),
        expert_split: false,
        batch: Some(a.batch),
        fp16: a.fp16,
        shard_mb: Some(256),
        limit: Some(a.samples),
        feat_u8: false,
        part: None,
        force: false,
        quiet: true,
    };
    let cfg: CacheConfig = build_config(&cache_args)?;
    let devices = parse_devices(&a.devices)?;
    let first = *devices.first().context("no device")?;

    // Baseline: forward alone, same experts, same batch, on every device in turn (the pipeline uses them
    // all at once, so the fair baseline is the sum over devices).
    let batches = (a.samples as usize).div_ceil(a.batch.max(1)).max(2);
    let forward = || -> anyhow::Result<f64> {
        let mut sps = 0.0;
        for d in &devices {
            sps += srcache_cache::forward_only_throughput(&cfg, *d, batches)?;
        }
        Ok(sps)
    };
    // Baseline measured before and after the pipeline, best of the two: on a shared machine this keeps a
    // neighbour's load spike from flattering the ratio.
    let before = forward()?;
    let summary = srcache_cache::run(&cfg, &NoProgress)?;
    let after = forward()?;
    let forward_sps = before.max(after);
    let wall = summary.pipeline_s;
    let pipeline_sps = summary.written as f64 / wall;
    println!("device          {} ({:?} first)", a.devices, first);
    println!("experts         {}", cfg.experts.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", "));
    println!("patch           {}x{} LR, x{}, batch {}", a.patch, a.patch, a.scale, a.batch);
    println!("forward only    {forward_sps:.1} samples/s (best of {before:.1} before, {after:.1} after)");
    println!(
        "pipeline        {pipeline_sps:.1} samples/s ({} samples, {:.1} MB, ratio {:.2}x vs raw f32)",
        summary.written,
        summary.bytes as f64 / 1e6,
        summary.ratio()
    );
    println!(
        "stage busy      ingest {:.2}s  forward {:.2}s  compress {:.2}s  write {:.2}s  (wall {wall:.2}s)",
        summary.stages.ingest_s, summary.stages.forward_s, summary.stages.compress_s, summary.stages.write_s
    );
    println!("ratio           {:.1}% of forward-only throughput", 100.0 * pipeline_sps / forward_sps.max(1e-9));
    Ok(())
}
