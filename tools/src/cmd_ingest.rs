//! `srcache ingest lr` (the field's MATLAB LR script) and `srcache ingest patches` (BasicSR's
//! extract_subimages + LMDB step, writing u8 CHW `lr`/`hr` patch shards through `formats`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use srcache_formats::Codec;
use srcache_ingest::{IngestConfig, PatchConfig, PatchShardOptions, ScanConfig};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    pub command: IngestCommand,
}

#[derive(Subcommand)]
pub enum IngestCommand {
    /// Write the LR folder of an HR folder: mod-crop, MATLAB imresize(1/s), DIV2K names (0001.png -> 0001x4.png).
    Lr(LrArgs),
    /// Cut LR/HR patch pairs and write them as u8 CHW shards (`lr`, `hr`, zstd) plus manifest.parquet.
    Patches(PatchesArgs),
}

#[derive(ClapArgs)]
pub struct LrArgs {
    /// HR image folder (searched recursively).
    #[arg(long)]
    pub hr: PathBuf,
    /// Downscaling factor (1..=8): each HR image is cropped to a multiple of it, then resized by 1/scale.
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Output folder for the LR PNGs (DIV2K names: 0001.png -> 0001x4.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Fail on the first bad input file instead of skipping it (a failed write fails the run either way).
    #[arg(long)]
    pub strict: bool,
}

#[derive(ClapArgs)]
pub struct PatchesArgs {
    /// HR image folder (searched recursively).
    #[arg(long)]
    pub hr: PathBuf,
    /// Existing LR folder (DIV2K `0001x4.png` or same names); generated with MATLAB bicubic when absent.
    #[arg(long)]
    pub lr: Option<PathBuf>,
    /// Super-resolution scale (1..=8).
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Patch side in LR pixels (at least 1).
    #[arg(long, default_value_t = srcache_ingest::DEFAULT_PATCH)]
    pub patch: u32,
    /// Distance between patch origins in LR pixels (at least 1) [default: the patch size: adjacent patches, no
    /// overlap; the same default as `srcache cache`].
    #[arg(long)]
    pub stride: Option<u32>,
    /// Skip patches whose LR luma variance is below this.
    #[arg(long)]
    pub flat_threshold: Option<f32>,
    /// Degradation variants, e.g. `clean`, `blur:1.2+noise:5`, `jpeg:75` (repeatable; default clean).
    #[arg(long = "variant")]
    pub variants: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decode/LR workers (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// How `lr`/`hr` are stored: zstd (about half the size of raw on photos) or raw (fastest to write and
    /// read, zero-copy from the map).
    #[arg(long, value_enum, default_value_t = PatchCodec::Zstd)]
    pub codec: PatchCodec,
    /// zstd level (1 is fast; 3 saves a few percent more for about 3x the CPU; negative = faster still).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub zstd_level: i32,
    /// Shard size target in MiB (at least 1).
    #[arg(long, default_value_t = 2048)]
    pub shard_mib: u64,
    /// Output dataset directory: new or empty, or the same ingest to resume (its ingest.json must match).
    #[arg(long)]
    pub out: PathBuf,
    /// Fail on the first bad input file instead of skipping it (a failed write fails the run either way).
    #[arg(long)]
    pub strict: bool,
    /// Start over when --out holds a different ingest: delete its srcache files (shards, manifest, ingest.json,
    /// temporary files) first. A directory with any other file is refused even so.
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PatchCodec {
    Raw,
    Zstd,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        IngestCommand::Lr(a) => run_lr(a),
        IngestCommand::Patches(a) => run_patches(a),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}}) {{msg}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

fn run_lr(a: LrArgs) -> Result<()> {
    srcache_ingest::scan::check_scale(a.scale)?;
    let n = srcache_ingest::scan::list_images(&a.hr)?.len() as u64;
    let pb = bar(n, "images");
    let tick = || pb.inc(1);
    let result = srcache_ingest::write_lr_folder(&a.hr, a.scale, &a.out, a.strict, &tick);
    pb.finish_and_clear();
    let (written, skipped) = result.with_context(|| format!("writing LR x{} of {}", a.scale, a.hr.display()))?;
    println!("wrote {written} LR images (x{}) to {}", a.scale, a.out.display());
    report_skipped(&skipped);
    Ok(())
}

fn report_skipped(skipped: &[srcache_ingest::Skipped]) {
    if !skipped.is_empty() {
        eprintln!("skipped {} file(s):", skipped.len());
        for s in skipped {
            eprintln!("  {}", s.to_error());
        }
    }
}

fn run_patches(a: PatchesArgs) -> Result<()> {
    let cfg = IngestConfig {
        scan: ScanConfig { hr_dir: a.hr.clone(), lr_dir: a.lr.clone(), scale: a.scale },
        patch: PatchConfig { size: a.patch, stride: a.stride, flat_threshold: a.flat_threshold },
        variants: a.variants.clone(),
        seed: a.seed,
        workers: a.workers,
        strict: a.strict,
        ..IngestConfig::default()
    };
    let codec = match a.codec {
        PatchCodec::Raw => Codec::Raw,
        PatchCodec::Zstd => Codec::Zstd { level: a.zstd_level },
    };
    if a.shard_mib == 0 || a.shard_mib > 1 << 30 {
        anyhow::bail!("--shard-mib {} is outside 1..={}", a.shard_mib, 1u64 << 30);
    }
    let opts = PatchShardOptions { codec, target_shard_bytes: a.shard_mib << 20, force: a.force };
    let pb = bar(0, "images");
    let progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let result = srcache_ingest::write_patch_dataset(&cfg, &a.out, &opts, &progress);
    pb.finish_and_clear();
    let s = result.with_context(|| format!("ingesting {} into {}", a.hr.display(), a.out.display()))?;
    let d = &s.dataset;
    println!(
        "{} samples ({} new) from {} images in {} shard(s), {:.1} MiB ({:.2}x compression, {codec}) -> {}",
        d.samples,
        s.written,
        s.images,
        d.shards,
        d.bytes as f64 / (1 << 20) as f64,
        d.raw_bytes as f64 / d.bytes.max(1) as f64,
        a.out.display()
    );
    report_skipped(&s.skipped);
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}
