//! `srcache bench loader`: shard loader vs one-fp32-archive-per-sample baseline (goal >= 5x), and training step
//! time fed by the loader vs in-memory batches (goal <= 1.05x), in one run.

use std::path::PathBuf;

use super::loader_lib::{self as bench, LoaderBenchConfig};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchLoaderArgs {
    /// Where to create the scratch folder for the generated shards and archives (default: the system temp
    /// dir). The bench makes its own new subfolder there and removes only that.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 48)]
    pub samples: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Batches timed on each side.
    #[arg(long, default_value_t = 24)]
    pub batches: usize,
    /// Random sub-crop side in LR pixels (default: the whole 64x64 patch).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Store sr/feat zstd-compressed (byte-shuffled) instead of raw.
    #[arg(long)]
    pub zstd: bool,
    #[arg(long, default_value_t = 12)]
    pub train_steps: usize,
}

pub fn run(a: BenchLoaderArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch > 0 && a.workers > 0 && a.batches > 0 && a.samples > 0, "--batch, --workers, --batches and --samples must be at least 1");
    anyhow::ensure!(a.samples >= a.batch, "--samples {} cannot fill one batch of {}", a.samples, a.batch);
    let parent = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let scratch = tempfile::Builder::new().prefix("srcache-bench-loader-").tempdir_in(&parent)?;
    let mut cfg = LoaderBenchConfig {
        samples: a.samples,
        batch_size: a.batch,
        workers: a.workers,
        batches: a.batches,
        crop: a.crop,
        train_steps: a.train_steps,
        ..Default::default()
    };
    cfg.dir = scratch.path().to_path_buf();
    if a.zstd {
        cfg.codec = srcache_formats::Codec::ShuffleZstd { level: 1 };
    }
    let report = bench::run(&cfg, &mut |m| eprintln!("{m}"))?;
    println!("{report}");
    Ok(())
}
