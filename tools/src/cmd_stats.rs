//! `srcache stats`: how good each expert is on the cached data, and what value ranges the tensors hold.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use srcache_formats::{Manifest, Shard, MANIFEST_FILE};

use crate::cmd_inspect::{open_checked, shard_paths};
use srcache_trainer::plot::{self as render, HistPanel};

/// Per-expert PSNR distribution from the manifest (mean, p5, p50, p95, and how often each expert is the
/// best on a sample), plus per-tensor value ranges from a sample of the shards. Optionally draws one
/// PSNR histogram panel per expert (dashed line = mean) into a PNG, with an SVG twin beside it.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset directory (shards + manifest.parquet).
    pub dir: PathBuf,
    /// Also write a PNG (and an SVG beside it) with a PSNR histogram per expert.
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    /// How many samples (evenly spread over the dataset) to decode for the value ranges.
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
}

pub fn run(args: Args) -> Result<()> {
    let path = args.dir.join(MANIFEST_FILE);
    let rows = Manifest::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if rows.is_empty() {
        bail!("{}: manifest has no rows", path.display());
    }
    let mut per: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut best: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        for (e, p) in &r.psnr {
            per.entry(e.clone()).or_default().push(*p);
        }
        if let Some((e, _)) = r.psnr.iter().filter(|(_, p)| p.is_finite()).max_by(|a, b| a.1.total_cmp(b.1)) {
            *best.entry(e.clone()).or_default() += 1;
        }
    }
    println!("{} samples; PSNR (dB, Y channel) per expert:", rows.len());
    println!("{:<20} {:>8} {:>8} {:>8} {:>8} {:>12}", "expert", "mean", "p5", "p50", "p95", "best on");
    for (e, v) in &per {
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        let mut s = v.clone();
        let b = best.get(e).copied().unwrap_or(0);
        println!(
            "{:<20} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6} ({:>4.1}%)",
            e,
            mean,
            render::quantile(&mut s, 0.05),
            render::quantile(&mut s, 0.5),
            render::quantile(&mut s, 0.95),
            b,
            100.0 * b as f64 / rows.len() as f64
        );
    }
    value_ranges(&args)?;
    if let Some(out) = &args.histogram {
        draw_histograms(&per, out)?;
        println!("wrote {} and {}", out.display(), render::svg_path(out).display());
    }
    Ok(())
}

fn value_ranges(args: &Args) -> Result<()> {
    let shards: Vec<Shard> = shard_paths(&args.dir)?.iter().map(|p| open_checked(p)).collect::<Result<_>>()?;
    let total: usize = shards.iter().map(Shard::len).sum();
    let want = args.samples.clamp(1, total.max(1));
    let Some(schema) = shards.first().map(|s| s.schema().clone()) else { return Ok(()) };
    let mut acc = vec![(f32::INFINITY, f32::NEG_INFINITY, 0f64, 0f64, 0u64); schema.tensors.len()];
    for k in 0..want {
        let mut g = k * total / want;
        let Some(shard) = shards.iter().find(|s| {
            if g < s.len() {
                true
            } else {
                g -= s.len();
                false
            }
        }) else {
            break;
        };
        for (t, a) in acc.iter_mut().enumerate() {
            for v in shard.tensor_at(g, t)?.to_f32()? {
                a.0 = a.0.min(v);
                a.1 = a.1.max(v);
                a.2 += v as f64;
                a.3 += (v as f64) * (v as f64);
                a.4 += 1;
            }
        }
    }
    println!();
    println!("value ranges over {want} sampled samples (u8 tensors are 0..255):");
    println!("{:<24} {:>10} {:>10} {:>10} {:>10}", "tensor", "min", "max", "mean", "std");
    for (spec, a) in schema.tensors.iter().zip(&acc) {
        let n = a.4.max(1) as f64;
        let mean = a.2 / n;
        let std = (a.3 / n - mean * mean).max(0.0).sqrt();
        println!("{:<24} {:>10.4} {:>10.4} {:>10.4} {:>10.4}", spec.name, a.0, a.1, mean, std);
    }
    Ok(())
}

fn draw_histograms(per: &BTreeMap<String, Vec<f32>>, out: &std::path::Path) -> Result<()> {
    let all: Vec<f32> = per.values().flatten().copied().filter(|v| v.is_finite()).collect();
    let lo = all.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, 50.0) };
    let titles: Vec<(String, Vec<u64>, f32)> = per
        .iter()
        .map(|(e, v)| {
            let mean = v.iter().sum::<f32>() / v.len().max(1) as f32;
            (format!("{e}: {} samples", v.len()), render::histogram(v, HIST_BINS, lo, hi), mean)
        })
        .collect();
    let panels: Vec<HistPanel<'_>> = titles
        .iter()
        .enumerate()
        .map(|(k, (title, counts, mean))| HistPanel {
            title,
            counts,
            lo,
            hi,
            color: render::PALETTE[k % render::PALETTE.len()],
            x_label: "PSNR (dB, Y channel)",
            y_label: "Samples",
            marker: Some((*mean, format!("mean {mean:.2} dB"))),
        })
        .collect();
    render::save_histograms(&panels, HIST_W, HIST_PANEL_H, out)?;
    Ok(())
}

/// Bins over the common PSNR range; every expert's panel uses the same bins, so panels compare.
pub const HIST_BINS: usize = 40;
const HIST_W: u32 = 640;
const HIST_PANEL_H: u32 = 220;
