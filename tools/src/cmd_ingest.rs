//! `srcache ingest lr` (the field's MATLAB LR script) and `srcache ingest patches` (BasicSR's
//! extract_subimages + LMDB step, writing u8 CHW `lr`/`hr` patch shards through `formats`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use srcache_formats::{encode, Codec, DType, DatasetOptions, DatasetWriter, SampleMeta, Schema, TensorSpec};
use srcache_ingest::{IngestConfig, PatchConfig, PatchSample, ScanConfig};

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
    /// Downscaling factor: each HR image is cropped to a multiple of it, then resized by 1/scale.
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Output folder for the LR PNGs (DIV2K names: 0001.png -> 0001x4.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Fail on the first bad file instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

#[derive(ClapArgs)]
pub struct PatchesArgs {
    #[arg(long)]
    pub hr: PathBuf,
    /// Existing LR folder (DIV2K `0001x4.png` or same names); generated with MATLAB bicubic when absent.
    #[arg(long)]
    pub lr: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// Patch size in LR pixels.
    #[arg(long, default_value_t = 64)]
    pub patch: u32,
    #[arg(long, default_value_t = 48)]
    pub stride: u32,
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
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    #[arg(long, default_value_t = 2048)]
    pub shard_mib: u64,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        IngestCommand::Lr(a) => run_lr(a),
        IngestCommand::Patches(a) => run_patches(a).map(|_| ()),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}}) {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

fn run_lr(a: LrArgs) -> Result<()> {
    let n = srcache_ingest::scan::list_images(&a.hr)?.len() as u64;
    let pb = bar(n, "images");
    let tick = || pb.inc(1);
    let (written, skipped) = srcache_ingest::write_lr_folder(&a.hr, a.scale, &a.out, a.strict, &tick)
        .with_context(|| format!("writing LR x{} of {}", a.scale, a.hr.display()))?;
    pb.finish();
    println!("wrote {written} LR images (x{}) to {}", a.scale, a.out.display());
    report_skipped(&skipped);
    Ok(())
}

fn report_skipped(skipped: &[srcache_ingest::Skipped]) {
    if !skipped.is_empty() {
        eprintln!("skipped {} file(s):", skipped.len());
        for s in skipped {
            eprintln!("  {}: {}", s.path.display(), s.reason);
        }
    }
}

/// The schema of an ingest-only dataset.
pub fn patch_schema(scale: u32, patch: u32, zstd_level: i32) -> Schema {
    let (p, hp) = (patch as usize, (patch * scale) as usize);
    let codec = Codec::Zstd { level: zstd_level };
    let mut s = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, p, p], codec),
        TensorSpec::new("hr", DType::U8, &[3, hp, hp], codec),
    ]);
    s.attrs.insert("scale".into(), scale.to_string());
    s.attrs.insert("patch".into(), patch.to_string());
    s.attrs.insert("experts".into(), String::new());
    s
}

/// HWC RGB8 to CHW bytes.
pub fn to_chw(img: &image::RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut out = vec![0u8; 3 * w * h];
    let (r, rest) = out.split_at_mut(w * h);
    let (g, b) = rest.split_at_mut(w * h);
    for (i, px) in raw.chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    out
}

/// Runs the patch ingest; returns (samples written, images seen). Used by `bench ingest` too.
pub fn run_patches(a: PatchesArgs) -> Result<(u64, usize)> {
    let cfg = IngestConfig {
        scan: ScanConfig { hr_dir: a.hr.clone(), lr_dir: a.lr.clone(), scale: a.scale },
        patch: PatchConfig { size: a.patch, stride: a.stride, flat_threshold: a.flat_threshold },
        variants: a.variants.clone(),
        seed: a.seed,
        workers: a.workers,
        strict: a.strict,
        ..IngestConfig::default()
    };
    let schema = patch_schema(a.scale, a.patch, a.zstd_level);
    let opts = DatasetOptions { target_shard_bytes: a.shard_mib << 20 };
    let (mut writer, resume) = DatasetWriter::create_or_resume(&a.out, schema.clone(), opts)
        .with_context(|| format!("opening dataset {}", a.out.display()))?;
    let mut stream = srcache_ingest::stream(&cfg).with_context(|| format!("scanning {}", a.hr.display()))?;
    let images = stream.image_count();
    let pb = bar(images as u64, "images");
    let mut seen = 0u64;
    let mut written = 0u64;
    // Encoding (zstd) is the CPU-heavy part of writing: done in parallel per chunk of samples, written in order.
    let mut chunk: Vec<PatchSample> = Vec::with_capacity(256);
    let flush = |chunk: &mut Vec<PatchSample>, writer: &mut DatasetWriter| -> Result<u64> {
        let encoded = encode_parallel(&schema, chunk);
        let n = chunk.len() as u64;
        chunk.clear();
        for e in encoded {
            let (meta, t) = e?;
            writer.write_encoded(&meta, t)?;
        }
        Ok(n)
    };
    while let Some(item) = stream.next() {
        let sample = item?;
        seen += 1;
        pb.set_position(stream.images_done() as u64);
        if seen <= resume.samples {
            continue;
        }
        chunk.push(sample);
        if chunk.len() >= 256 {
            written += flush(&mut chunk, &mut writer)?;
        }
    }
    written += flush(&mut chunk, &mut writer)?;
    pb.set_position(images as u64);
    pb.finish();
    let summary = writer.finish()?;
    println!(
        "{} samples ({} new) from {images} images in {} shard(s), {:.1} MiB ({:.2}x compression) -> {}",
        summary.samples,
        written,
        summary.shards,
        summary.bytes as f64 / (1 << 20) as f64,
        summary.raw_bytes as f64 / summary.bytes.max(1) as f64,
        a.out.display()
    );
    report_skipped(&stream.skipped());
    for w in stream.warnings() {
        eprintln!("warning: {w}");
    }
    Ok((written, images))
}

type Encoded = (SampleMeta, Vec<srcache_formats::EncodedTensor>);

fn encode_one(schema: &Schema, s: &PatchSample) -> Result<Encoded> {
    let meta = SampleMeta {
        id: s.id.clone(),
        source: s.source.clone(),
        patch: s.patch,
        variant: s.variant.clone(),
        psnr: Default::default(),
    };
    let lr = encode(&schema.tensors[0], &to_chw(&s.lr))?;
    let hr = encode(&schema.tensors[1], &to_chw(&s.hr))?;
    Ok((meta, vec![lr, hr]))
}

/// zstd is the CPU-heavy part of writing: encode a chunk on all cores, keep the order.
fn encode_parallel(schema: &Schema, chunk: &[PatchSample]) -> Vec<Result<Encoded>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let per = chunk.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = chunk
            .chunks(per)
            .map(|part| sc.spawn(move || part.iter().map(|s| encode_one(schema, s)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(anyhow::anyhow!("encoder thread panicked"))]))
            .collect()
    })
}
