//! Ingest-only datasets: LR/HR patch pairs written as u8 CHW shards through `formats` (what BasicSR's
//! extract_subimages + LMDB step does), resumable like every srcache dataset.
//!
//! The output directory records what made it in `ingest.json` ([`IngestRecord`]: the settings that decide the
//! dataset's bytes and the fingerprints of its input files). A rerun into the same directory resumes only when
//! both match, and is refused otherwise with the difference named; `force` starts over instead.
//!
//! Encoding is the CPU-heavy part of writing (zstd runs at a few hundred MB/s a core, against the GB/s of the
//! crops), so it runs on the rayon pool in chunks while the stream's workers decode the next images; shards are
//! still written in stream order, which is what makes a resumed run byte-identical to an uninterrupted one.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use srcache_formats::{
    encode_owned, Codec, DType, DatasetOptions, DatasetSummary, DatasetWriter, DirState, EncodedTensor, Lock, OwnedDir, Ownership, SampleMeta,
    Schema, TensorSpec, MANIFEST_FILE, PARTS_DIR, SKIPPED_KEY,
};

use crate::error::{summarise_skipped, IngestError, Result, Skipped};
use crate::inputs::InputList;
use crate::{IngestConfig, PatchSample};

/// How an ingest-only dataset is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchShardOptions {
    /// Codec of both `lr` and `hr`. zstd level 1 stores 2K photo patches at ~70% of their size (level 3 saves a
    /// few percent more for ~3× the CPU); `Raw` is the fastest to write and is read zero-copy.
    pub codec: Codec,
    pub target_shard_bytes: u64,
    /// Start over when the output directory holds a different ingest (or one without a record): delete its
    /// srcache files (shards, manifest, `ingest.json`, srcache temporary files) first. A directory holding
    /// anything else is refused even so.
    pub force: bool,
}

impl Default for PatchShardOptions {
    fn default() -> Self {
        PatchShardOptions { codec: Codec::ZSTD, target_shard_bytes: 2 << 30, force: false }
    }
}

/// The record of an ingest in its output directory.
pub const RECORD_FILE: &str = "ingest.json";

/// Held (flock) by the process writing an ingest output, for the whole run: a second run into the same
/// directory (a `--force` included) is refused before it removes or writes anything.
pub const LOCK_FILE: &str = "ingest.lock";

/// What an ingest owns in its output directory: the dataset, its record and its lock.
pub const OUTPUT: Ownership = Ownership {
    what: "ingest output",
    choose: "output directory",
    files: &[RECORD_FILE],
    dirs: &[],
    dataset: true,
    parts: None,
    lock: Lock::File(LOCK_FILE),
};

/// Version of the [`IngestRecord`] layout.
const RECORD_VERSION: u32 = 1;

/// The settings that decide an ingest-only dataset's bytes. Worker count, queue depth and strictness are not
/// among them: they change how fast (or whether) a run gets there, not what it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSettings {
    pub scale: u32,
    pub patch: u32,
    pub stride: u32,
    pub flat_threshold: Option<f32>,
    /// Variant specs as given (`["clean"]` when none was).
    pub variants: Vec<String>,
    pub seed: u64,
    /// Whether LR came from an LR folder (else MATLAB bicubic).
    pub lr_given: bool,
    pub codec: Codec,
    pub target_shard_bytes: u64,
}

/// `ingest.json`: what an ingest-only dataset was made from. Written atomically before the first shard, so
/// even a run killed at once leaves a directory that only the same ingest resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestRecord {
    pub version: u32,
    pub settings: RecordSettings,
    /// Where the inputs were when the record was written. Informational: the inputs are identified by
    /// `inputs`, so a moved or copied input folder with the same files still resumes.
    pub hr_dir: String,
    pub lr_dir: Option<String>,
    pub inputs: InputList,
}

impl IngestRecord {
    pub fn new(cfg: &IngestConfig, opts: &PatchShardOptions, inputs: InputList) -> IngestRecord {
        let variants = if cfg.variants.is_empty() { vec!["clean".to_string()] } else { cfg.variants.clone() };
        IngestRecord {
            version: RECORD_VERSION,
            settings: RecordSettings {
                scale: cfg.scan.scale,
                patch: cfg.patch.size,
                stride: cfg.patch.stride(),
                flat_threshold: cfg.patch.flat_threshold,
                variants,
                seed: cfg.seed,
                lr_given: cfg.scan.lr_dir.is_some(),
                codec: opts.codec,
                target_shard_bytes: opts.target_shard_bytes,
            },
            hr_dir: cfg.scan.hr_dir.display().to_string(),
            lr_dir: cfg.scan.lr_dir.as_ref().map(|d| d.display().to_string()),
            inputs,
        }
    }

    /// What differs from the recorded run (`self`) to `now`: each setting by name with both values, then the
    /// input files added, removed or changed. None when `now` may resume `self`.
    pub fn diff(&self, now: &IngestRecord) -> Option<String> {
        let mut parts = Vec::new();
        if self.version != now.version {
            parts.push(format!("record version {} (this srcache writes {})", self.version, now.version));
        }
        let as_map = |s: &RecordSettings| match serde_json::to_value(s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (as_map(&self.settings), as_map(&now.settings));
        for (k, v) in &new {
            let was = old.get(k).cloned().unwrap_or(serde_json::Value::Null);
            if &was != v {
                parts.push(format!("{k} was {was}, now {v}"));
            }
        }
        if let Some(d) = self.inputs.diff(&now.inputs) {
            parts.push(d.to_string());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Decides whether the claimed `out` may receive this ingest: a new or empty directory, or the same ingest to
/// resume (or, with `force`, any srcache dataset, emptied first). Returns whether the record must be written.
fn prepare_output(owned: &OwnedDir, record: &IngestRecord, force: bool) -> Result<bool> {
    let out = owned.path();
    let refuse = |what: String| Err(IngestError::Resume { path: out.to_path_buf(), what });
    if owned.found() != DirState::Ours {
        return Ok(true);
    }
    if out.join(PARTS_DIR).exists() {
        return refuse("holds a merged dataset (parts/), not an ingest output; choose another output directory".into());
    }
    if force {
        owned.remove_own()?;
        return Ok(true);
    }
    let path = out.join(RECORD_FILE);
    let again = "rerun with the same inputs and settings to resume, pass --force to start over, or choose another output directory";
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let old: IngestRecord = serde_json::from_str(&text).map_err(|e| IngestError::Resume {
                path: path.clone(),
                what: format!("unreadable ingest record ({e}); pass --force to start over"),
            })?;
            match old.diff(record) {
                None => Ok(false),
                Some(d) => refuse(format!("holds a different ingest: {d}; {again}")),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_data = srcache_formats::list_shards(out).map(|l| !l.is_empty()).unwrap_or(true) || out.join(MANIFEST_FILE).exists();
            if has_data {
                refuse(format!(
                    "holds a dataset without {RECORD_FILE} (written by `srcache cache` or an older srcache), so resuming could mix inputs; pass --force to start over, or choose another output directory"
                ))
            } else {
                // Only temporary files of a run killed before its record was written.
                Ok(true)
            }
        }
        Err(e) => Err(IngestError::Unreadable { path, source: e }),
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
    let mut s = Schema::new(vec![TensorSpec::new("lr", DType::U8, &[3, p, p], codec), TensorSpec::new("hr", DType::U8, &[3, hp, hp], codec)]);
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
    let meta = SampleMeta { id: s.id.clone(), source: s.source.clone(), patch: s.patch, variant: s.variant.clone(), psnr: Default::default() };
    let enc =
        |i: usize, img: &image::RgbImage| encode_owned(&schema.tensors[i], to_chw(img)).map_err(|e| IngestError::write(Path::new(&s.source), e));
    Ok((meta, vec![enc(0, &s.lr)?, enc(1, &s.hr)?]))
}

/// Runs the patch pipeline of `cfg` into the dataset at `out`: created, or resumed when it holds this same
/// ingest (same settings and input files, see [`IngestRecord`]); refused when it holds anything else, unless
/// `opts.force` (then emptied of its srcache files first). `on_progress(images_done, images_total)` is called as
/// images complete. A run that ends with no sample in the dataset is an error (nothing is left behind by it).
pub fn write_patch_dataset(
    cfg: &IngestConfig,
    out: &Path,
    opts: &PatchShardOptions,
    on_progress: &dyn Fn(usize, usize),
) -> Result<PatchDatasetSummary> {
    cfg.validate()?;
    // The storage settings too (a zstd level outside -7..=22, a zero shard size), before the folder is touched:
    // a refused start must not leave a record that then refuses the corrected command.
    patch_schema(cfg.scan.scale, cfg.patch.size, opts.codec).validate()?;
    if opts.target_shard_bytes == 0 {
        return Err(IngestError::Config { what: "target shard size 0: must be at least 1 byte".into() });
    }
    // First, before the (long) scan: `--out ~` or any directory with files srcache did not write is refused.
    OUTPUT.state(out)?;
    let mut report = crate::scan(&cfg.scan)?;
    if cfg.strict {
        // Before the output directory is touched: a strict run that cannot start leaves nothing behind.
        if let Some(s) = report.skipped.first() {
            return Err(s.to_error());
        }
    }
    // Kept in the report too: the stream checks each file it decodes against its fingerprint.
    let record = IngestRecord::new(cfg, opts, report.fingerprint(&cfg.scan));
    // The lock before anything is removed or written (`--force` included): a second run is refused, not mixed
    // in. The folder is checked again as it is claimed (the scan took time).
    let owned = OUTPUT.claim(out)?;
    let new_record = match prepare_output(&owned, &record, opts.force) {
        Ok(n) => n,
        Err(e) => {
            owned.release();
            return Err(e);
        }
    };
    let werr = |e: srcache_formats::FormatError| IngestError::write(out, e);
    let record_path = out.join(RECORD_FILE);
    if new_record {
        let json = serde_json::to_vec_pretty(&record).map_err(|e| IngestError::write(&record_path, e))?;
        srcache_formats::write_atomic(&record_path, &json).map_err(|e| IngestError::write(&record_path, e))?;
    }
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
        // Leave nothing behind: the directory is as it was before (or gone, if this run made it), so a
        // corrected rerun is not refused as "a different ingest".
        drop(writer);
        let _ = std::fs::remove_file(&record_path);
        owned.release();
        return Err(IngestError::NoSamples { path: out.to_path_buf(), summary: summarise_skipped(images, &skipped) });
    }
    let listed = serde_json::to_string(&skipped).map_err(|e| IngestError::write(&out.join(MANIFEST_FILE), e))?;
    writer.set_manifest_metadata(SKIPPED_KEY, listed);
    let dataset = writer.finish().map_err(werr)?;
    Ok(PatchDatasetSummary { dataset, written, images, skipped, warnings: stream.warnings().to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_read_back_resumes_itself_and_names_changed_settings() {
        let mut cfg = IngestConfig::default();
        // 0.1 has no exact f32: the comparison must not see the f32 -> f64 widening as a change.
        cfg.patch.flat_threshold = Some(0.1);
        let opts = PatchShardOptions::default();
        let rec = IngestRecord::new(&cfg, &opts, InputList::default());
        let back: IngestRecord = serde_json::from_str(&serde_json::to_string_pretty(&rec).expect("json")).expect("parse");
        assert_eq!(back.diff(&rec), None);
        cfg.patch.stride = Some(7);
        cfg.seed = 3;
        let d = back.diff(&IngestRecord::new(&cfg, &opts, InputList::default())).expect("differs");
        assert_eq!(d, "seed was 0, now 3; stride was 64, now 7");
    }

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
