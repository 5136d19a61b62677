//! `srcache eval`: PSNR/SSIM tables on benchmark folders for bicubic, each expert and the fusion model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use srcache_ingest::metrics::{psnr_y, ssim_y};
use srcache_ingest::{prepare_image, scan, ScanConfig};

use crate::srstack::{SrStack, StackArgs};

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

/// Mean metrics of one method on one dataset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub dataset: String,
    pub method: String,
    pub psnr: f64,
    pub ssim: f64,
    pub images: usize,
}

/// Evaluates `stack` on one benchmark folder.
pub fn eval_dataset(stack: &SrStack, dir: &Path, bar: &ProgressBar) -> Result<Vec<Row>> {
    let hr_dir = if dir.join("HR").is_dir() { dir.join("HR") } else { dir.to_path_buf() };
    let lr_dir = dir.join(format!("LR_bicubic/X{}", stack.scale));
    let cfg = ScanConfig { hr_dir, lr_dir: lr_dir.is_dir().then_some(lr_dir), scale: stack.scale };
    let report = scan(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    for u in &report.unpaired {
        bar.println(format!("skipped {}: {}", u.path.display(), u.reason));
    }
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut sums: Vec<(String, f64, f64)> = Vec::new();
    let mut n = 0;
    // The scan already knows how many images this folder has: grow the bar here instead of listing twice.
    bar.inc_length(report.images.len() as u64);
    for entry in &report.images {
        let img = match prepare_image(entry, stack.scale) {
            Ok(i) => i,
            Err(e) => {
                bar.println(format!("skipped: {e}"));
                continue;
            }
        };
        let out = stack.run(&img.lr).with_context(|| format!("{}", entry.hr.display()))?;
        let crop = stack.scale;
        let mut results = vec![("matlab_bicubic".to_string(), &out.bicubic)];
        results.extend(out.experts.iter().map(|(n, i)| (n.clone(), i)));
        if let Some(f) = &out.fused {
            results.push(("fused".to_string(), f));
        }
        for (i, (method, sr)) in results.into_iter().enumerate() {
            let (p, s) = (psnr_y(sr, &img.hr, crop), ssim_y(sr, &img.hr, crop));
            if sums.len() <= i {
                sums.push((method, 0.0, 0.0));
            }
            sums[i].1 += p;
            sums[i].2 += s;
        }
        n += 1;
        bar.inc(1);
    }
    Ok(sums
        .into_iter()
        .map(|(method, p, s)| Row { dataset: name.clone(), method, psnr: p / n.max(1) as f64, ssim: s / n.max(1) as f64, images: n })
        .collect())
}

pub fn print_table(rows: &[Row]) {
    println!("{:<12} {:<16} {:>9} {:>8} {:>7}", "dataset", "method", "PSNR(Y)", "SSIM(Y)", "images");
    for r in rows {
        println!("{:<12} {:<16} {:>9.3} {:>8.4} {:>7}", r.dataset, r.method, r.psnr, r.ssim, r.images);
    }
}

pub fn run(a: Args) -> Result<()> {
    let stack = a.stack.build()?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for d in &a.datasets {
        bar.set_message(d.display().to_string());
        rows.extend(eval_dataset(&stack, d, &bar)?);
    }
    bar.finish_and_clear();
    print_table(&rows);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
