//! `srcache bench resize` (MATLAB-exact ×s LR of a 2040×1356 image: MPix/s of input on 1 core and all cores,
//! against a naive per-pixel reference in the same run) and `srcache bench ingest` (decode-only images/s vs
//! decode + LR + patches + zstd shards, on 2K PNGs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use image::RgbImage;
use srcache_ingest::{rayon, resize};

use srcache_formats::Codec;
use srcache_ingest::{IngestConfig, PatchConfig, PatchShardOptions, ScanConfig};

#[derive(ClapArgs)]
pub struct BenchResizeArgs {
    /// Source photo, tiled/upscaled to the benchmark size (default: the built-in astronaut.png).
    #[arg(long)]
    pub photo: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    #[arg(long, default_value_t = 2040)]
    pub width: u32,
    #[arg(long, default_value_t = 1356)]
    pub height: u32,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
}

#[derive(ClapArgs)]
pub struct BenchIngestArgs {
    /// Folder of HR PNGs; default: 8 synthetic-size 2040×1356 PNGs made from the test photos in a temp dir.
    #[arg(long)]
    pub hr: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub images: usize,
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    #[arg(long, default_value_t = 64)]
    pub patch: u32,
    /// Distance between patch origins in LR pixels (48 < 64: overlapping, the workload BENCHMARKS.md's
    /// ingest figures were measured on; `srcache ingest patches` defaults to the patch size).
    #[arg(long, default_value_t = 48)]
    pub stride: u32,
}

/// A real photo brought to `w × h`: MATLAB-bicubic upscaled so the content stays photographic.
fn bench_image(photo: Option<&PathBuf>, w: u32, h: u32) -> Result<RgbImage> {
    let src = match photo {
        Some(path) => image::open(path).with_context(|| format!("opening {}", path.display()))?.into_rgb8(),
        None => srcache_ingest::photos::decode("astronaut.png")?,
    };
    Ok(resize::imresize(&src, w, h))
}

/// The straightforward reference: for every output pixel and channel, the 2-D separable sum evaluated
/// directly from the contribution tables, no intermediate image, no parallelism.
fn naive_lr(img: &RgbImage, scale: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (w / scale as usize, h / scale as usize);
    let s = 1.0 / scale as f64;
    let rows = resize::contributions(h, oh, s, true);
    let cols = resize::contributions(w, ow, s, true);
    let raw = img.as_raw();
    let mut out = RgbImage::new(ow as u32, oh as u32);
    for y in 0..oh {
        for x in 0..ow {
            let mut px = [0u8; 3];
            for (c, p) in px.iter_mut().enumerate() {
                let mut acc = 0f32;
                for i in 0..rows.taps {
                    let (wy, ry) = (rows.weight[y * rows.taps + i], rows.index[y * rows.taps + i]);
                    let mut line = 0f32;
                    for j in 0..cols.taps {
                        let (wx, cx) = (cols.weight[x * cols.taps + j], cols.index[x * cols.taps + j]);
                        line += wx * raw[(ry * w + cx) * 3 + c] as f32;
                    }
                    acc += wy * line;
                }
                *p = resize::to_u8(acc);
            }
            out.put_pixel(x as u32, y as u32, image::Rgb(px));
        }
    }
    out
}

fn mpix_per_s(img: &RgbImage, iters: usize, f: impl Fn() -> RgbImage) -> (f64, RgbImage) {
    let mut last = f(); // warm-up
    let t = Instant::now();
    for _ in 0..iters {
        last = f();
    }
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    (img.width() as f64 * img.height() as f64 / 1e6 / secs, last)
}

pub fn run_resize(a: BenchResizeArgs) -> Result<()> {
    let img = bench_image(a.photo.as_ref(), a.width, a.height)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("LR x{} of a {}x{} RGB image (MPix/s of input), {cores} cores available", a.scale, a.width, a.height);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().context("thread pool")?;
    let (r1, lr1) = one.install(|| mpix_per_s(&img, a.iters, || resize::bicubic_lr(&img, a.scale).1));
    let (rn, lrn) = mpix_per_s(&img, a.iters, || resize::bicubic_lr(&img, a.scale).1);
    let (rnaive, lr_naive) = mpix_per_s(&img, 1.max(a.iters / 5), || naive_lr(&img, a.scale));
    let same = lr1 == lrn;
    let diff = lrn.as_raw().iter().zip(lr_naive.as_raw()).filter(|(p, q)| p != q).count();
    println!("  srcache, 1 core      {r1:8.1} MPix/s");
    println!("  srcache, {cores} cores     {rn:8.1} MPix/s   (bar: >= 100 on 2 cores)");
    println!("  naive reference, 1 core {rnaive:6.1} MPix/s   speed-up x{:.1}", rn / rnaive);
    println!("  1-core == all-core output: {same}; bytes differing from naive: {diff} of {}", lrn.as_raw().len());
    Ok(())
}

/// What `srcache ingest patches` runs for these flags: the same library call, without its progress bar.
fn ingest_patches(a: &BenchIngestArgs, hr: &std::path::Path, lr: Option<PathBuf>, out: &std::path::Path, codec: Codec) -> Result<(u64, usize)> {
    let cfg = IngestConfig {
        scan: ScanConfig { hr_dir: hr.to_path_buf(), lr_dir: lr, scale: a.scale },
        patch: PatchConfig { size: a.patch, stride: Some(a.stride), flat_threshold: None },
        strict: true,
        ..IngestConfig::default()
    };
    let opts = PatchShardOptions { codec, target_shard_bytes: 2048 << 20, force: false };
    let s = srcache_ingest::write_patch_dataset(&cfg, out, &opts, &|_: usize, _: usize| {})
        .with_context(|| format!("ingesting {} into {}", hr.display(), out.display()))?;
    Ok((s.written, s.images))
}

pub fn run_ingest(a: BenchIngestArgs) -> Result<()> {
    use srcache_ingest::rayon::prelude::*;
    // A scratch folder of its own, removed when the bench ends (whatever happens).
    let scratch = tempfile::Builder::new().prefix("srcache-bench-ingest-").tempdir()?;
    let tmp = scratch.path().to_path_buf();
    let hr = match &a.hr {
        Some(d) => d.clone(),
        None => {
            let d = tmp.join("hr");
            std::fs::create_dir_all(&d)?;
            super::write_bench_pngs(&d, a.images)?;
            d
        }
    };
    let files = srcache_ingest::scan::list_images(&hr)?;
    let n = files.len();
    let png_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    // Warm the page cache so every run below reads from memory, as the first would not.
    srcache_ingest::decode_all(&files);
    // Decode only, same parallelism as the pipeline (one image per worker).
    let t = Instant::now();
    let decoded = srcache_ingest::decode_all(&files);
    let dec_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(decoded == n, "decoded {decoded} of {n} images");
    // Decode + MATLAB LR, to attribute the end-to-end cost.
    let t = Instant::now();
    let pixels: u64 = files
        .par_iter()
        .filter_map(|f| srcache_ingest::scan::decode_rgb8(f).ok())
        .map(|(img, _)| {
            let (hr, _) = resize::bicubic_lr(&img, a.scale);
            hr.width() as u64 * hr.height() as u64
        })
        .sum();
    let lr_s = t.elapsed().as_secs_f64();
    let dec_ips = n as f64 / dec_s;
    println!("{n} PNGs of {} ({:.1} MPix, {:.1} bits/pixel):", hr.display(), pixels as f64 / 1e6, png_bytes as f64 * 8.0 / pixels.max(1) as f64);
    println!("  decode only                    {dec_ips:7.2} images/s");
    println!("  + MATLAB LR x{}                 {:7.2} images/s  ({:.0}%)", a.scale, n as f64 / lr_s, 100.0 * dec_s / lr_s);
    // The patch stream without writing: decode + LR + crops + CHW, to separate cutting from storing.
    let cfg = srcache_ingest::IngestConfig {
        scan: srcache_ingest::ScanConfig { hr_dir: hr.clone(), lr_dir: None, scale: a.scale },
        patch: srcache_ingest::PatchConfig { size: a.patch, stride: Some(a.stride), flat_threshold: None },
        strict: true,
        ..Default::default()
    };
    let t = Instant::now();
    let mut bytes = 0usize;
    for s in srcache_ingest::stream(&cfg)? {
        let s = s?;
        bytes += srcache_ingest::shards::to_chw(&s.lr).len() + srcache_ingest::shards::to_chw(&s.hr).len();
    }
    let cut_s = t.elapsed().as_secs_f64();
    println!(
        "  + patches, CHW (not written)    {:7.2} images/s  ({:.0}%), {:.0} MB of patches",
        n as f64 / cut_s,
        100.0 * dec_s / cut_s,
        bytes as f64 / 1e6
    );
    // DIV2K ships train_LR_bicubic/X4: with the LR folder given, ingest decodes LR instead of computing it.
    let lr_dir = tmp.join(format!("lr_x{}", a.scale));
    srcache_ingest::write_lr_folder(&hr, a.scale, &lr_dir, true, &|| {})?;
    let runs = [(Codec::Zstd { level: 1 }, "zstd(1)", None), (Codec::Raw, "raw", None), (Codec::Raw, "raw", Some(lr_dir.clone()))];
    for (codec, label, lr) in runs {
        let out = tmp.join(format!("out-{label}"));
        let given = lr.is_some();
        let t = Instant::now();
        let (samples, images) = ingest_patches(&a, &hr, lr, &out, codec)?;
        let e2e_s = t.elapsed().as_secs_f64();
        let e2e_ips = images as f64 / e2e_s;
        let bytes: u64 = std::fs::read_dir(&out)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
        let what = if given { format!("{label}, LR folder given") } else { format!("{label} shards") };
        println!(
            "  end-to-end, {what:<20} {e2e_ips:7.2} images/s  ({:.0}% of decode; bar >= 80%), {samples} patches, {:.0} MB",
            100.0 * e2e_ips / dec_ips,
            bytes as f64 / 1e6
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(())
}
