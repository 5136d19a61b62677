//! `srcache eval`: PSNR/SSIM tables on benchmark folders for MATLAB bicubic, each expert and the fusion model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use srcache_experts::baselines::{self, Baselines};
use srcache_experts::benchmark::BenchmarkFolder;
use srcache_experts::evaluate::{evaluate_folder_with, Row};
use srcache_experts::{Fuser, SrStack};
use srcache_formats::Dataset;

use crate::stack::StackArgs;

/// Evaluate on benchmark folders (Set5/Set14/B100/Urban100/Manga109 layout: DIR/HR/*.png and optionally
/// DIR/LR_bicubic/X<scale>/*x<scale>.png; LR is made with MATLAB bicubic when absent). Metrics follow the
/// papers: Y channel (BT.601), border crop = scale, SSIM with an 11×11 Gaussian (σ 1.5).
///
/// Beside MATLAB bicubic, each expert and the fused model, the table has the baselines a fusion model must
/// beat: `average(experts)`; `<best>+x8`, the ×8 self-ensemble (flips + rot90) of the expert with the best
/// mean PSNR on the --cache's training samples; `ls-blend(cache)`, a least-squares linear blend of the
/// experts fitted on --cache; and `oracle(bound)`, the per-pixel best expert against HR — an upper bound for
/// any per-pixel selection, not a method.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Benchmark folders (each with HR/, or itself a folder of HR images).
    #[arg(required = true)]
    pub datasets: Vec<PathBuf>,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Also write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only the experts and the fused model: no baseline rows.
    #[arg(long)]
    pub no_baselines: bool,
    /// The expert whose ×8 self-ensemble is a row (default: the best in --cache's manifest; none without a cache).
    #[arg(long, value_name = "EXPERT")]
    pub self_ensemble: Option<String>,
    /// Cache samples the linear blend is fitted on (evenly spread).
    #[arg(long, default_value_t = 256)]
    pub blend_samples: usize,
}

/// The baseline rows: which can be computed here, and notes for those that cannot.
fn baselines(a: &Args, stack: &SrStack, ds: Option<&Dataset>) -> Result<Baselines> {
    if a.no_baselines {
        return Ok(Baselines::none());
    }
    let names = stack.names();
    let mut b = Baselines { average: names.len() >= 2, oracle: names.len() >= 2, ..Baselines::none() };
    b.self_ensemble = match (&a.self_ensemble, ds) {
        (Some(n), _) => Some(names.iter().position(|e| e == n).with_context(|| format!("--self-ensemble {n}: no such expert (have {names:?})"))?),
        (None, Some(ds)) => baselines::best_in_cache(ds, &names),
        (None, None) => {
            eprintln!("note: no self-ensemble row: give --cache (its best expert is used) or --self-ensemble EXPERT");
            None
        }
    };
    if let Some(ds) = ds {
        match baselines::fit_blend(ds, &names, a.blend_samples) {
            Ok(w) => {
                let terms: Vec<String> = names.iter().zip(&w).map(|(n, w)| format!("{w:+.4}·{n}")).collect();
                eprintln!(
                    "note: {}: {} {:+.5} (least squares on {} cache samples)",
                    baselines::BLEND,
                    terms.join(" "),
                    w[names.len()],
                    a.blend_samples.min(ds.len())
                );
                b.blend = Some(w);
            }
            Err(e) => eprintln!("note: no linear-blend row: {}", srcache_formats::error_chain(&e)),
        }
    }
    Ok(b)
}

pub fn print_table(rows: &[Row]) {
    let w = rows.iter().map(|r| r.method.chars().count()).max().unwrap_or(0).max(16);
    println!("{:<12} {:<w$} {:>9} {:>8} {:>7}", "dataset", "method", "PSNR(Y)", "SSIM(Y)", "images");
    for r in rows {
        println!("{:<12} {:<w$} {:>9.3} {:>8.4} {:>7}", r.dataset, r.method, r.psnr, r.ssim, r.images);
    }
}

pub fn run(a: Args) -> Result<()> {
    let (stack, fusion, cache) = a.stack.build_with_cache()?;
    for n in &stack.notes {
        eprintln!("note: {n}");
    }
    let baselines = baselines(&a, &stack, cache.as_ref())?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    for d in &a.datasets {
        let folder = BenchmarkFolder::scan(d, stack.scale, 0)?;
        for s in &folder.skipped {
            // `suspend`, not `println`: a hidden bar (stderr not a terminal) drops its printlns.
            bar.suspend(|| eprintln!("skipped {}: {}", s.path.display(), s.reason));
            skipped += 1;
        }
        bar.set_message(folder.name.clone());
        bar.inc_length(folder.entries.len() as u64);
        let fuser = fusion.as_ref().map(|f| f as &dyn Fuser);
        rows.extend(evaluate_folder_with(
            &stack,
            fuser,
            &folder,
            &baselines,
            &mut |img, r| {
                for n in &r.notes {
                    bar.suspend(|| eprintln!("note: {}: {n}", img.name));
                }
                bar.inc(1);
                Ok(())
            },
            &mut |e| {
                bar.suspend(|| eprintln!("skipped: {}", srcache_formats::error_chain(e)));
                skipped += 1;
                bar.inc(1);
            },
        )?);
    }
    bar.finish_and_clear();
    print_table(&rows);
    if let Some(p) = &a.json {
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&rows)?)?;
    }
    if skipped > 0 {
        // The table covers the other images; a run that left some out is not a clean success.
        anyhow::bail!("{skipped} image(s) could not be evaluated (named above); the table covers the rest");
    }
    Ok(())
}
