//! `srcache bench cache`: end-to-end cache pipeline throughput against the experts' forward pass alone on
//! the same device (goal on GPU: pipeline ≥ 90% of forward-only).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use srcache_cache::{parse_devices, CacheConfig, CacheOverrides, NoProgress, StoragePreset};

#[derive(Args, Debug)]
pub struct BenchCacheArgs {
    /// HR images (default: --images DIV2K-size frames made from the built-in photos).
    #[arg(long)]
    pub hr: Option<PathBuf>,
    /// Without --hr: how many 2040x1356 frames to generate (each gives (510/patch)·(339/patch) x4 patches).
    #[arg(long, default_value_t = 8)]
    pub images: usize,
    /// Patch stride in LR pixels (default: the patch size).
    #[arg(long)]
    pub stride: Option<u32>,
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    #[arg(long, default_value_t = 32)]
    pub patch: u32,
    /// LR context each side of a patch, as `srcache cache --halo` [default: 8]; the forward-only baseline runs
    /// the same windows (patch + 2·halo).
    #[arg(long)]
    pub halo: Option<u32>,
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
    /// fp16 autocast on CUDA (both the pipeline and the forward-only baseline).
    #[arg(long)]
    pub fp16: bool,
    /// Store SR as f16 (`srcache cache --lossless`) instead of the default u8 residual.
    #[arg(long)]
    pub lossless: bool,
    /// Also write the figures as JSON here (for scripts/gpu-check.sh).
    #[arg(long)]
    pub json: Option<PathBuf>,
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
        None => {
            let d = scratch.path().join("hr");
            std::fs::create_dir_all(&d)?;
            super::write_bench_pngs(&d, a.images)?;
            d
        }
    };
    let overrides = CacheOverrides {
        hr_dir: Some(hr),
        scale: Some(a.scale),
        patch: Some(a.patch),
        stride: a.stride,
        halo: a.halo,
        experts,
        storage: StoragePreset::from_flags(a.lossless, false, false, None)?,
        out: Some(out.clone()),
        devices: Some(a.devices.clone()),
        batch: Some(a.batch),
        fp16: a.fp16,
        shard_mb: Some(256),
        limit: Some(a.samples),
        ..CacheOverrides::default()
    };
    // The same merge `srcache cache` applies to its flags (SRCACHE_* environment included).
    let cfg: CacheConfig = CacheConfig::default().with_overrides(&overrides, |k| std::env::var(k).ok())?;
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
    for d in &summary.devices {
        println!(
            "device {:<8} busy {:.2}s, idle {:.2}s = {:.1}% idle (waiting for input), final batch {}",
            d.device,
            d.wall_s - d.idle_s,
            d.idle_s,
            100.0 * d.idle_share(),
            d.final_chunk
        );
    }
    let ratio = pipeline_sps / forward_sps.max(1e-9);
    println!("ratio           {:.1}% of forward-only throughput (bar >= 90% on GPU)", 100.0 * ratio);
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "devices": a.devices, "experts": cfg.experts.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            "patch": a.patch, "scale": a.scale, "batch": a.batch, "fp16": a.fp16, "samples": summary.written,
            "forward_only_samples_s": forward_sps, "pipeline_samples_s": pipeline_sps, "ratio": ratio,
            "device_times": summary.devices, "stages": summary.stages,
        });
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&j)?)?;
    }
    Ok(())
}
