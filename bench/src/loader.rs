//! `srcache bench loader`: shard loader vs one-fp32-archive-per-sample baseline (goal >= 5x), vs a seed-style
//! serial reader and LitData's figure (goal >= 3x), its first epoch (goal >= 2x), and training step time fed by
//! the loader vs in-memory batches (goal <= 1.05x), in one run, on a real cache storage preset.

use std::path::PathBuf;

use super::loader_lib::{self as bench, BenchStorage, LoaderBenchConfig};
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
    /// How the shards store their tensors: `default` (the cache's default: u8 residual sr, f16 shuffle+zstd
    /// features, zstd lr/hr), `lossless`, `compact` (sr-u8+pca-16), `raw` (every tensor raw), `zstd` (f16
    /// sr/feat shuffle+zstd, lr/hr raw), or any `bench fidelity` variant name with a PCA count.
    #[arg(long, default_value = "raw")]
    pub storage: BenchStorage,
    /// Same as `--storage zstd` (kept for older scripts).
    #[arg(long)]
    pub zstd: bool,
    /// Timed rounds of each side, interleaved (best kept): more on a loaded machine.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also time the loader with `loader.cache_decoded` (decoded samples kept in RAM from the second epoch).
    #[arg(long)]
    pub cache_decoded: bool,
    /// Print a one-thread breakdown of a sample's read time by stage.
    #[arg(long)]
    pub profile: bool,
    #[arg(long, default_value_t = 12)]
    pub train_steps: usize,
    /// Device of the training-step comparison: `cpu`, `cuda:0` (the trainer pins batches and copies them
    /// non-blocking there).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch size of the training-step comparison (the GPU check uses 16).
    #[arg(long, default_value_t = 2)]
    pub train_batch: usize,
    /// LR crop side of the training-step comparison (the GPU check uses 48).
    #[arg(long, default_value_t = 32)]
    pub train_crop: u32,
    /// Also write the figures as JSON here (for scripts/gpu-check.sh).
    #[arg(long)]
    pub json: Option<PathBuf>,
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
        train_device: a.device.clone(),
        train_batch: a.train_batch,
        train_crop: a.train_crop,
        storage: if a.zstd { BenchStorage::Zstd } else { a.storage.clone() },
        rounds: a.rounds,
        cache_decoded: a.cache_decoded,
        profile: a.profile,
        ..Default::default()
    };
    cfg.dir = scratch.path().to_path_buf();
    let report = bench::run(&cfg, &mut |m| eprintln!("{m}"))?;
    println!("{report}");
    if let Some(p) = &a.json {
        let mut j = serde_json::to_value(&report)?;
        j["device"] = a.device.clone().into();
        j["train_batch"] = a.train_batch.into();
        j["train_crop"] = a.train_crop.into();
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&j)?)?;
    }
    Ok(())
}
