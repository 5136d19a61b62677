//! `srcache merge OUT`: join the parts `srcache cache --part K/N --out OUT` wrote into one dataset.

use std::path::PathBuf;

use anyhow::Result;

/// Check that every part OUT/parts/K-of-N exists, is finished and was made with the same input config,
/// experts and schema, then write OUT/manifest.parquet over all of them (shards stay where they are; nothing is
/// copied). Refuses, naming the part, when one is missing, unfinished or different, and then changes nothing.
/// Idempotent. Every reading command (train, verify, inspect, stats, dump, export, the Python reader) then
/// takes OUT as one dataset.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The --out of the part runs (holding parts/).
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let s = srcache_cache::merge(&a.out)?;
    println!(
        "merged {} parts into {}: {} samples in {} shards ({:.1} MB), {} input file(s) skipped",
        s.parts.len(),
        a.out.display(),
        s.samples,
        s.shards,
        s.bytes as f64 / 1e6,
        s.skipped
    );
    Ok(())
}
