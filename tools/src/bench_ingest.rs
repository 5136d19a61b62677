//! `srcache bench resize` (MATLAB-exact ×s LR of a 2040×1356 image: MPix/s of input on 1 core and all cores,
//! against a naive per-pixel reference in the same run) and `srcache bench ingest` (decode-only images/s vs
//! decode + LR + patches + zstd shards, on 2K PNGs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use image::RgbImage;
use srcache_ingest::{rayon, resize};

#[derive(ClapArgs)]
pub struct BenchResizeArgs {
    /// Source photo, tiled/upscaled to the benchmark size (default: tests/data/photos/astronaut.png).
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
    #[arg(long, default_value_t = 48)]
    pub stride: u32,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A real photo brought to `w × h`: MATLAB-bicubic upscaled so the content stays photographic.
fn bench_image(photo: Option<&PathBuf>, w: u32, h: u32) -> Result<RgbImage> {
    let path = photo.cloned().unwrap_or_else(|| workspace().join("tests/data/photos/astronaut.png"));
    let src = image::open(&path).with_context(|| format!("opening {}", path.display()))?.into_rgb8();
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

fn write_bench_pngs(dir: &std::path::Path, n: usize) -> Result<()> {
    let photos = workspace().join("tests/data/photos");
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(&photos)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    srcs.sort();
    anyhow::ensure!(!srcs.is_empty(), "no photos in {}", photos.display());
    for i in 0..n {
        let img = bench_image(Some(&srcs[i % srcs.len()]), 2040, 1356)?;
        img.save(dir.join(format!("{:04}.png", i + 1)))?;
    }
    Ok(())
}

pub fn run_ingest(a: BenchIngestArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("srcache-bench-ingest-{}", std::process::id()));
    let hr = match &a.hr {
        Some(d) => d.clone(),
        None => {
            let d = tmp.join("hr");
            std::fs::create_dir_all(&d)?;
            write_bench_pngs(&d, a.images)?;
            d
        }
    };
    let files = srcache_ingest::scan::list_images(&hr)?;
    let n = files.len();
    // Decode only, same parallelism as the pipeline (one image per worker).
    let t = Instant::now();
    let decoded = srcache_ingest::decode_all(&files);
    let dec_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(decoded == n, "decoded {decoded} of {n} images");
    let out = tmp.join("out");
    let t = Instant::now();
    let (samples, images) = crate::cmd_ingest::run_patches(crate::cmd_ingest::PatchesArgs {
        hr: hr.clone(),
        lr: None,
        scale: a.scale,
        patch: a.patch,
        stride: a.stride,
        flat_threshold: None,
        variants: Vec::new(),
        seed: 0,
        workers: 0,
        zstd_level: 3,
        shard_mib: 2048,
        out: out.clone(),
        strict: true,
    })?;
    let e2e_s = t.elapsed().as_secs_f64();
    let (dec_ips, e2e_ips) = (n as f64 / dec_s, images as f64 / e2e_s);
    println!("{n} PNGs of {}:", hr.display());
    println!("  decode only          {dec_ips:8.2} images/s");
    println!("  decode+LR+patches+shards {e2e_ips:6.2} images/s ({samples} patches)");
    println!("  ratio end-to-end / decode: {:.1}%  (bar: >= 80%)", 100.0 * e2e_ips / dec_ips);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
