//! `srcache bench …`: every benchmark of srcache, each printing its figure next to the named baseline in one
//! run (BENCHMARKS.md records them). Speed is measured here, never asserted in tests.

use clap::Subcommand;

mod cache;
mod fidelity;
mod formats;
mod fusion;
mod ingest;
mod loader;
mod loader_lib;
mod parity;

/// A 2K frame made of a real photo at its native resolution, mirror-tiled: unlike an upscaled photo it keeps
/// camera-like detail, so the PNG costs what DIV2K's do to decode (~12-13 bits/pixel against DIV2K's ~12.6).
pub(crate) fn native_mosaic(src: &image::RgbImage, w: u32, h: u32) -> image::RgbImage {
    let (sw, sh) = (src.width(), src.height());
    let fold = |v: u32, n: u32| {
        let p = v % (2 * n);
        if p < n {
            p
        } else {
            2 * n - 1 - p
        }
    };
    image::RgbImage::from_fn(w, h, |x, y| *src.get_pixel(fold(x, sw), fold(y, sh)))
}

/// `n` DIV2K-size (2040x1356) PNGs made from the built-in photos, `0001.png`…, into `dir`.
pub(crate) fn write_bench_pngs(dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let srcs = srcache_ingest::photos::PHOTOS;
    for i in 0..n {
        let src = srcache_ingest::photos::decode(srcs[i % srcs.len()].0)?;
        srcache_ingest::write_png(&dir.join(format!("{:04}.png", i + 1)), &native_mosaic(&src, 2040, 1356))?;
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum Bench {
    /// MATLAB-exact bicubic ×4 of a 2K image: MPix/s on 1 core and all cores.
    Resize(ingest::BenchResizeArgs),
    /// End-to-end ingest (decode + LR + patches + write) vs decode alone.
    Ingest(ingest::BenchIngestArgs),
    /// Cache pipeline throughput vs the experts' forward pass alone.
    Cache(cache::BenchCacheArgs),
    /// Shard loader vs one fp32 archive per sample; training step fed by the loader vs in-memory batches.
    Loader(loader::BenchLoaderArgs),
    /// What lossy cache storage costs: each compact variant's size, loader speed and fused PSNR/SSIM vs lossless.
    Fidelity(fidelity::BenchFidelityArgs),
    /// The same real patches through each expert on a device and on the CPU: fp32 max |diff|, fp16 PSNR.
    Parity(parity::BenchParityArgs),
    /// Each fusion preset trained on one cache under one budget: eval table with the baselines, each preset's
    /// gain over the best expert and over its ×8 self-ensemble, training wall time and samples/s.
    Fusion(fusion::BenchFusionArgs),
    /// Per-codec encode/decode GB/s and ratio on real-photo content; shard vs one fp32 archive per sample.
    Formats(formats::BenchFormatsArgs),
}

pub fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Resize(a) => ingest::run_resize(a),
        Bench::Ingest(a) => ingest::run_ingest(a),
        Bench::Cache(a) => cache::run(a),
        Bench::Loader(a) => loader::run(a),
        Bench::Formats(a) => formats::run(a),
        Bench::Parity(a) => parity::run(a),
        Bench::Fidelity(a) => fidelity::run(a),
        Bench::Fusion(a) => fusion::run(a),
    }
}
