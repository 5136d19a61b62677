//! `srcache cache`: run the experts over a dataset into shards (resumable; a finished run is a no-op).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use srcache_cache::{CacheConfig, CacheOverrides, CacheSummary, Progress, StoragePreset};

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// Run config (TOML). Flags given on the command line override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HR image directory.
    #[arg(long)]
    pub hr: Option<PathBuf>,
    /// Paired LR directory (default: bicubic downscale of HR).
    #[arg(long)]
    pub lr: Option<PathBuf>,
    /// Upscaling factor of the experts (default 4).
    #[arg(long)]
    pub scale: Option<u32>,
    /// LR patch side in pixels [default: 64].
    #[arg(long)]
    pub patch: Option<u32>,
    /// Distance between patch origins in LR pixels [default: the patch size: adjacent patches, no overlap].
    /// The same default applies to a cache.toml without `stride`.
    #[arg(long)]
    pub stride: Option<u32>,
    /// LR pixels of context each side of a patch that the experts see (their outputs are the patch's centre, as
    /// whole-image inference makes it) [default: 8]; 0 = bare patches.
    #[arg(long)]
    pub halo: Option<u32>,
    /// Degradation variant of the LR input, each cached as its own samples: `clean`, `blur:1.2`, `noise:5`,
    /// `jpeg:75`, or a chain like `blur:1.2+noise:5` (repeatable; default: clean only; seeded by the config's
    /// `seed`). Replaces the config file's `input.variants`.
    #[arg(long = "variant", value_name = "SPEC")]
    pub variants: Vec<String>,
    /// Expert: NAME=builtin:bicubic|lanczos3|sharp_bicubic or NAME=path/to/expert.pt (repeatable).
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cpu:N, cuda:0,cuda:1
    #[arg(long)]
    pub devices: Option<String>,
    /// Pin each expert to its own device (NAME@cuda:1 in --expert); default is data-parallel.
    #[arg(long)]
    pub expert_split: bool,
    /// Patches per forward pass on each device (default 16; halved automatically on CUDA out-of-memory).
    #[arg(long)]
    pub batch: Option<usize>,
    /// fp16 autocast on CUDA.
    #[arg(long)]
    pub fp16: bool,
    /// Close a shard once it holds this many MiB of payload (default 2048).
    #[arg(long)]
    pub shard_mb: Option<u64>,
    /// Stop after N samples.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Store features lossy as 8-bit (a scale and offset per channel), zstd-compressed (`affine_u8_zstd`).
    #[arg(long)]
    pub feat_u8: bool,
    /// Store features as their leading PCA coefficients, per-channel 8-bit + zstd: K components (e.g. 16), or
    /// the fewest explaining a fraction of the variance (e.g. 0.999). The basis is fitted at the start on a
    /// seeded sample of the input and saved in the dataset.
    #[arg(long, value_name = "K|FRACTION")]
    pub feat_pca: Option<String>,
    /// Store SR outputs as u8 (what every metric is computed on), losslessly as a residual over an exact
    /// bicubic of the LR patch, zstd-compressed. This is the default; the flag overrides a config file's dtype.
    #[arg(long, conflicts_with = "lossless")]
    pub sr_u8: bool,
    /// Keep every expert output unrounded: SR and features as f16, byte-shuffled + zstd (about 1.25x larger
    /// than the default u8 SR; see README "Storage"). --feat-u8 / --feat-pca still apply to the features.
    #[arg(long)]
    pub lossless: bool,
    /// Cache only part K of N of the input (0 <= K < N), into OUT/parts/K-of-N/; `srcache merge OUT` joins
    /// the parts. `slurm` reads the part from SLURM_ARRAY_TASK_ID (or a Kubernetes JOB_COMPLETION_INDEX) and the
    /// count from SRCACHE_PART_COUNT or SLURM_ARRAY_TASK_COUNT. Parts are contiguous in file-name order and hold
    /// about the same number of pixels.
    #[arg(long, value_name = "K/N|slurm")]
    pub part: Option<String>,
    /// Delete the cache srcache made in OUT before (only its own files) and start over, instead of resuming or
    /// refusing a different config or input.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The config file (or the default config) with the flags given applied ([`CacheConfig::with_overrides`]).
pub fn build_config(a: &CacheArgs) -> anyhow::Result<CacheConfig> {
    if a.config.is_none() && a.hr.is_none() {
        bail!("give --config run.toml or at least --hr DIR --out DIR --expert NAME=SOURCE");
    }
    let cfg = match &a.config {
        Some(p) => CacheConfig::from_toml_file(p)?,
        None => CacheConfig::default(),
    };
    let overrides = CacheOverrides {
        hr_dir: a.hr.clone(),
        lr_dir: a.lr.clone(),
        scale: a.scale,
        patch: a.patch,
        stride: a.stride,
        halo: a.halo,
        limit: a.limit,
        variants: a.variants.clone(),
        experts: a.experts.clone(),
        storage: StoragePreset::from_flags(a.lossless, a.sr_u8, a.feat_u8, a.feat_pca.as_deref())?,
        out: a.out.clone(),
        devices: a.devices.clone(),
        expert_split: a.expert_split,
        batch: a.batch,
        fp16: a.fp16,
        shard_mb: a.shard_mb,
        part: a.part.clone(),
    };
    Ok(cfg.with_overrides(&overrides, |k| std::env::var(k).ok())?)
}

/// indicatif bar: samples/s, MB/s written, ETA when the total is known.
pub struct Bar {
    bar: ProgressBar,
    start: Instant,
    bytes: std::sync::atomic::AtomicU64,
    quiet: bool,
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
        Bar { bar, start: Instant::now(), bytes: Default::default(), quiet }
    }
}

impl Progress for Bar {
    fn start(&self, total: Option<u64>, done: u64) {
        let style = match total {
            Some(t) => {
                self.bar.set_length(t);
                "{bar:30} {pos}/{len} samples  {per_sec}  {msg}  ETA {eta}"
            }
            None => "{spinner} {pos} samples  {per_sec}  {msg}",
        };
        if let Ok(s) = ProgressStyle::with_template(style) {
            self.bar.set_style(s);
        }
        self.bar.set_position(done);
    }
    fn advance(&self, samples: u64, bytes: u64) {
        use std::sync::atomic::Ordering;
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.bar.inc(samples);
        let mbs = total as f64 / 1e6 / self.start.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!("{mbs:.1} MB/s"));
    }
    fn message(&self, msg: &str) {
        // indicatif drops println on a hidden bar, and a bar is hidden whenever stderr is not a terminal (logs,
        // CI, SLURM): messages would vanish exactly where nobody watches. Only --quiet silences them.
        if self.bar.is_hidden() {
            if !self.quiet {
                eprintln!("{msg}");
            }
        } else {
            self.bar.println(msg);
        }
    }
}

pub fn print_summary(s: &CacheSummary) {
    if s.no_op {
        println!("already complete: {} samples in {} shards ({} bytes); nothing to do", s.samples, s.shards, s.bytes);
        return;
    }
    if !s.skipped.is_empty() {
        eprintln!("skipped {} input file(s) (listed in the manifest, see `srcache inspect`):", s.skipped.len());
        for k in &s.skipped {
            eprintln!("  {}: {}", k.path.display(), k.reason);
        }
    }
    println!(
        "samples {} ({} resumed, {} written) in {} shards, {:.1} MB, {:.2}x smaller than raw f32",
        s.samples,
        s.resumed,
        s.written,
        s.shards,
        s.bytes as f64 / 1e6,
        s.ratio()
    );
    for (name, p) in &s.mean_psnr {
        println!("  mean Y-PSNR {name:<16} {p:.2} dB");
    }
    for d in &s.devices {
        println!(
            "  device {:<8} {} batches, {} samples; busy {:.1}s, idle {:.1}s ({:.0}% idle, waiting for input); final batch {}",
            d.device,
            d.batches,
            d.samples,
            d.wall_s - d.idle_s,
            d.idle_s,
            100.0 * d.idle_share(),
            d.final_chunk
        );
    }
    let pca = if s.stages.pca_fit_s > 0.0 { format!("feature PCA fit {:.1}s, ", s.stages.pca_fit_s) } else { String::new() };
    println!(
        "time {:.1}s wall; busy: {pca}ingest {:.1}s, forward {:.1}s, compress {:.1}s, write {:.1}s; {:.1} samples/s",
        s.wall_s,
        s.stages.ingest_s,
        s.stages.forward_s,
        s.stages.compress_s,
        s.stages.write_s,
        s.written as f64 / s.wall_s.max(1e-9)
    );
}

pub fn run(a: CacheArgs) -> anyhow::Result<()> {
    let cfg = build_config(&a)?;
    let bar = Bar::new(a.quiet);
    if let Some(p) = cfg.input.part {
        bar.message(&format!("part {p}: writing {}", cfg.dataset_dir().display()));
    }
    let summary = srcache_cache::run_with(&cfg, &srcache_cache::RunOptions { force: a.force }, &bar)?;
    bar.bar.finish_and_clear();
    print_summary(&summary);
    Ok(())
}
