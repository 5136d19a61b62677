//! `srcache eval`: PSNR/SSIM tables on benchmark folders for MATLAB bicubic, each expert and the fusion model.

use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use srcache_experts::benchmark::BenchmarkFolder;
use srcache_experts::evaluate::{evaluate_folder, Row};
use srcache_experts::Fuser;

use crate::stack::StackArgs;

/// Evaluate on benchmark folders (Set5/Set14/B100/Urban100/Manga109 layout: DIR/HR/*.png and optionally
/// DIR/LR_bicubic/X<scale>/*x<scale>.png; LR is made with MATLAB bicubic when absent). Metrics follow the
/// papers: Y channel (BT.601), border crop = scale, SSIM with an 11×11 Gaussian (σ 1.5).
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
}

pub fn print_table(rows: &[Row]) {
    println!("{:<12} {:<16} {:>9} {:>8} {:>7}", "dataset", "method", "PSNR(Y)", "SSIM(Y)", "images");
    for r in rows {
        println!("{:<12} {:<16} {:>9.3} {:>8.4} {:>7}", r.dataset, r.method, r.psnr, r.ssim, r.images);
    }
}

pub fn run(a: Args) -> Result<()> {
    let (stack, fusion) = a.stack.build()?;
    for n in &stack.notes {
        eprintln!("note: {n}");
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for d in &a.datasets {
        let folder = BenchmarkFolder::scan(d, stack.scale, 0)?;
        for s in &folder.skipped {
            bar.println(format!("skipped {}: {}", s.path.display(), s.reason));
        }
        bar.set_message(folder.name.clone());
        bar.inc_length(folder.entries.len() as u64);
        let fuser = fusion.as_ref().map(|f| f as &dyn Fuser);
        rows.extend(evaluate_folder(
            &stack,
            fuser,
            &folder,
            &mut |_, _| {
                bar.inc(1);
                Ok(())
            },
            &mut |e| {
                bar.println(format!("skipped: {}", srcache_formats::error_chain(e)));
                bar.inc(1);
            },
        )?);
    }
    bar.finish_and_clear();
    print_table(&rows);
    if let Some(p) = &a.json {
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
