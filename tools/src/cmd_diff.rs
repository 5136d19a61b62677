//! `srcache diff A B`: do two datasets hold the same samples?

use std::path::PathBuf;

use anyhow::{bail, Result};
use srcache_formats::Dataset;

/// Compare two datasets (plain or merged roots): the same sample ids in the same order, the same decoded
/// bytes of every tensor, and the same manifest rows apart from where a sample is stored (shard and index).
/// Prints the first differences; exits 0 only when the datasets are equal. E.g. a merged 3-part cache
/// against a single-process run of the same input, or a resumed run against an uninterrupted one.
#[derive(clap::Args, Debug)]
pub struct Args {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Show at most this many differences.
    #[arg(long, default_value_t = 10)]
    pub max: usize,
    /// Let float tensors differ by up to this much per value (and ignore the PSNR and stored-size columns):
    /// for runs on different devices whose kernels are not bit-identical. Default: bit for bit.
    #[arg(long)]
    pub tolerance: Option<f32>,
}

pub fn run(a: Args) -> Result<()> {
    let (da, db) = (Dataset::open(&a.a)?, Dataset::open(&a.b)?);
    let diffs = srcache_formats::diff_datasets(&da, &db, a.max, a.tolerance)?;
    for d in &diffs {
        println!("DIFF {d}");
    }
    if !diffs.is_empty() {
        bail!("{} and {} differ ({} difference(s) shown)", a.a.display(), a.b.display(), diffs.len());
    }
    println!("same: {} samples, {} tensors each", da.len(), da.schema().map(|s| s.tensors.len()).unwrap_or(0));
    Ok(())
}
