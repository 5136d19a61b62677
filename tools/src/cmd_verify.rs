//! `srcache verify`: prove a dataset is intact before spending GPU/CPU hours training on it.

use std::path::PathBuf;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Check every payload checksum, that every payload decodes to its schema shape, that the schema is a
/// consistent SR layout (lr/hr/sr/feat shapes, scale and patch), and that the manifest agrees with the shards
/// row by row (each row is the sample at its position, with the same id, patch, PSNRs and sizes; each shard
/// sample has a row). A merged root is checked part by part. Prints each problem with its shard and sample,
/// then a summary line; exits non-zero if anything is wrong.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A dataset directory (shards + manifest.parquet), a merged root, or a single shard file (checksums only).
    pub path: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("verify [{bar:30}] {pos}/{len} shards {per_sec} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = srcache_formats::verify_dataset(&args.path, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    for p in &report.problems {
        println!("PROBLEM {p}");
    }
    println!("verify {}: {} shard(s), {} samples, {} problem(s)", args.path.display(), report.shards, report.samples, report.problems.len());
    if !report.is_ok() {
        bail!("{} problem(s) found in {}", report.problems.len(), args.path.display());
    }
    Ok(())
}
