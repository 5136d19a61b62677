//! Ingest-only datasets: LR/HR patch pairs written as u8 CHW shards through `formats` (what BasicSR's
//! extract_subimages + LMDB step does), resumable like every srcache dataset.
//!
//! Encoding is the CPU-heavy part of writing (zstd runs at a few hundred MB/s a core, against the GB/s of the
//! crops), so it runs on the rayon pool in chunks while the stream's workers decode the next images; shards are
//! still written in stream order, which is what makes a resumed run byte-identical to an uninterrupted one.

use std::path::Path;

use rayon::prelude::*;
use srcache_formats::{
    encode_owned, Codec, DType, DatasetOptions, DatasetSummary, DatasetWriter, EncodedTensor, SampleMeta, Schema, TensorSpec,
    MANIFEST_FILE, SKIPPED_KEY,
};

use crate::error::{summarise_skipped, IngestError, Result, Skipped};
use crate::{IngestConfig, PatchSample};

/// How an ingest-only dataset is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchShardOptions {
    /// Codec of both `lr` and `hr`. zstd level 1 stores 2K photo patches at ~70% of their size (level 3 saves a
    /// few percent more for ~3× the CPU); `Raw` is the fastest to write and is read zero-copy.
    pub codec: Codec,
    pub target_shard_bytes: u64,
}

impl Default for PatchShardOptions {
    fn default() -> Self {
        PatchShardOptions { codec: Codec::ZSTD, target_shard_bytes: 2 << 30 }
    }
}

/// What a patch ingest wrote and skipped.
#[derive(Debug, Clone)]
pub struct PatchDatasetSummary {
    pub dataset: DatasetSummary,
    /// Samples written by this run (a resumed run skips those already on disk).
    pub written: u64,
    /// Images the scan found.
    pub images: usize,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

/// The schema of an ingest-only dataset: `lr` u8 [3,p,p] and `hr` u8 [3,sp,sp].
pub fn patch_schema(scale: u32, patch: u32, codec: Codec) -> Schema {
    let (p, hp) = (patch as usize, (patch * scale) as usize);
    let mut s = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, p, p], codec),
        TensorSpec::new("hr", DType::U8, &[3, hp, hp], codec),
    ]);
    s.attrs.insert("scale".into(), scale.to_string());
    s.attrs.insert("patch".into(), patch.to_string());
    s.attrs.insert("experts".into(), String::new());
    s
}

/// HWC RGB8 to CHW bytes (the layout every srcache tensor uses).
pub fn to_chw(img: &image::RgbImage) -> Vec<u8> {
    let n = img.width() as usize * img.height() as usize;
    let mut out = vec![0u8; 3 * n];
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        unsafe { deinterleave_avx2(img.as_raw(), r, g, b) };
        return out;
    }
    deinterleave(img.as_raw(), r, g, b);
    out
}

/// A stride-3 deinterleave: baseline x86-64 (SSE2) has no byte shuffle, so the AVX2 build of the same loop
/// (LLVM turns it into pshufb/vpermq) is several times faster; it was ~9% of ingest CPU as plain SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_avx2(src: &[u8], r: &mut [u8], g: &mut [u8], b: &mut [u8]) {
    deinterleave(src, r, g, b)
}

#[inline(always)]
fn deinterleave(src: &[u8], r: &mut [u8], g: &mut [u8], b: &mut [u8]) {
    const L: usize = 32;
    let n = r.len().min(g.len()).min(b.len()).min(src.len() / 3);
    let full = n / L * L;
    for (k, px) in src[..3 * full].chunks_exact(3 * L).enumerate() {
        let (rr, gg, bb) = (&mut r[k * L..(k + 1) * L], &mut g[k * L..(k + 1) * L], &mut b[k * L..(k + 1) * L]);
        for i in 0..L {
            rr[i] = px[3 * i];
            gg[i] = px[3 * i + 1];
            bb[i] = px[3 * i + 2];
        }
    }
    for i in full..n {
        r[i] = src[3 * i];
        g[i] = src[3 * i + 1];
        b[i] = src[3 * i + 2];
    }
}

fn encode_sample(schema: &Schema, s: &PatchSample) -> Result<(SampleMeta, Vec<EncodedTensor>)> {
    let meta = SampleMeta {
        id: s.id.clone(),
        source: s.source.clone(),
        patch: s.patch,
        variant: s.variant.clone(),
        psnr: Default::default(),
    };
    let enc = |i: usize, img: &image::RgbImage| {
        encode_owned(&schema.tensors[i], to_chw(img)).map_err(|e| IngestError::write(Path::new(&s.source), e))
    };
    Ok((meta, vec![enc(0, &s.lr)?, enc(1, &s.hr)?]))
}

/// Runs the patch pipeline of `cfg` into the dataset at `out` (created, or resumed when it holds shards of the
/// same schema). `on_progress(images_done, images_total)` is called as images complete. A run that ends with
/// no sample in the dataset is an error.
pub fn write_patch_dataset(
    cfg: &IngestConfig,
    out: &Path,
    opts: &PatchShardOptions,
    on_progress: &dyn Fn(usize, usize),
) -> Result<PatchDatasetSummary> {
    cfg.validate()?;
    let report = crate::scan(&cfg.scan)?;
    if cfg.strict {
        // Before the output directory is touched: a strict run that cannot start leaves nothing behind.
        if let Some(s) = report.skipped.first() {
            return Err(s.to_error());
        }
    }
    let existed = out.exists();
    let werr = |e: srcache_formats::FormatError| IngestError::write(out, e);
    let schema = patch_schema(cfg.scan.scale, cfg.patch.size, opts.codec);
    let dopts = DatasetOptions { target_shard_bytes: opts.target_shard_bytes };
    let (mut writer, resume) = DatasetWriter::create_or_resume(out, schema.clone(), dopts).map_err(werr)?;
    let mut stream = crate::stream_from(cfg, report)?;
    let images = stream.image_count();
    let mut seen = 0u64;
    let mut written = 0u64;
    // Big enough that a rayon split has work for every core, small enough to bound memory (~8 MB of 256² HR).
    const CHUNK: usize = 128;
    let mut chunk: Vec<PatchSample> = Vec::with_capacity(CHUNK);
    let mut flush = |chunk: &mut Vec<PatchSample>, writer: &mut DatasetWriter| -> Result<()> {
        let encoded: Vec<_> = chunk.par_iter().map(|s| encode_sample(&schema, s)).collect();
        chunk.clear();
        for e in encoded {
            let (meta, t) = e?;
            writer.write_encoded(&meta, t).map_err(werr)?;
            written += 1;
        }
        Ok(())
    };
    while let Some(item) = stream.next() {
        let sample = item?;
        seen += 1;
        on_progress(stream.images_done(), images);
        if seen <= resume.samples {
            continue;
        }
        chunk.push(sample);
        if chunk.len() >= CHUNK {
            flush(&mut chunk, &mut writer)?;
        }
    }
    flush(&mut chunk, &mut writer)?;
    on_progress(images, images);
    let skipped = stream.skipped();
    if writer.samples() == 0 {
        // Leave nothing behind: the directory is as it was before (or gone, if this run made it).
        drop(writer);
        if !existed {
            let _ = std::fs::remove_dir(out);
        }
        return Err(IngestError::NoSamples { path: out.to_path_buf(), summary: summarise_skipped(images, &skipped) });
    }
    let listed = serde_json::to_string(&skipped).map_err(|e| IngestError::write(&out.join(MANIFEST_FILE), e))?;
    writer.set_manifest_metadata(SKIPPED_KEY, listed);
    let dataset = writer.finish().map_err(werr)?;
    Ok(PatchDatasetSummary { dataset, written, images, skipped, warnings: stream.warnings().to_vec() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn to_chw_splits_planes_for_every_length() {
        for (w, h) in [(1, 1), (5, 3), (32, 1), (33, 7), (64, 64)] {
            let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, (x + y * 7) as u8]));
            let chw = super::to_chw(&img);
            let n = (w * h) as usize;
            for (i, p) in img.pixels().enumerate() {
                assert_eq!([chw[i], chw[n + i], chw[2 * n + i]], p.0, "{w}x{h} pixel {i}");
            }
        }
    }
}
