//! The loader benchmark's work (`srcache bench loader`): the shard loader against the usual baseline (one fp32 torch archive per sample,
//! read by worker threads with the same crop + flips) and a seed-style one (the same archives read one by one on
//! the consuming thread), on the real cache storage presets, and training step time fed by the loader against
//! synthetic in-memory batches. Every benchmark lives in this crate (bench/), next to the command that prints it.

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use srcache_cache::{Builtin, CacheConfig, ExpertConfig, StoragePreset};
use srcache_formats::{Codec, DType, Dataset, DatasetOptions, DatasetWriter, PatchBox, SampleMeta, Schema, TensorSpec};
use srcache_trainer::error::TorchCtx;
use srcache_trainer::train::{MemorySource, Trainer};
use srcache_trainer::{Batch, Loader, LoaderConfig, LoaderPosition, TrainConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

/// How the bench's shards store their tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchStorage {
    /// Every tensor raw: lr/hr u8, sr/feat f16 (the zero-copy path).
    Raw,
    /// The bench's old `--zstd`: sr/feat f16 byte-shuffle + zstd(1), lr/hr raw.
    Zstd,
    /// A real cache preset resolved as `srcache cache` does (`cache/src/storage.rs`), lr/hr with the cache's
    /// image codec: `default`, `lossless`, `compact` (= `sr-u8+pca-16`: u8 residual sr, 16 PCA coefficients
    /// per expert as 8-bit + zstd), or any `bench fidelity` variant name with a PCA component count.
    Preset(String),
}

impl std::str::FromStr for BenchStorage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let b = match s {
            "raw" => BenchStorage::Raw,
            "zstd" => BenchStorage::Zstd,
            "compact" => BenchStorage::Preset("sr-u8+pca-16".into()),
            other => BenchStorage::Preset(other.into()),
        };
        b.layout()?;
        Ok(b)
    }
}

impl std::fmt::Display for BenchStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchStorage::Raw => write!(f, "raw"),
            BenchStorage::Zstd => write!(f, "zstd"),
            BenchStorage::Preset(p) if p == "sr-u8+pca-16" => write!(f, "compact (sr-u8+pca-16)"),
            BenchStorage::Preset(p) => write!(f, "{p}"),
        }
    }
}

/// What a storage setting resolves to for the bench's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchLayout {
    pub image: Codec,
    pub sr: (DType, Codec),
    pub feat: (DType, Codec),
    /// Feature channels stored as this many PCA coefficients.
    pub pca_k: Option<usize>,
}

impl BenchStorage {
    pub fn layout(&self) -> Result<BenchLayout> {
        Ok(match self {
            BenchStorage::Raw => BenchLayout { image: Codec::Raw, sr: (DType::F16, Codec::Raw), feat: (DType::F16, Codec::Raw), pca_k: None },
            BenchStorage::Zstd => {
                BenchLayout { image: Codec::Raw, sr: (DType::F16, Codec::SHUFFLE_ZSTD), feat: (DType::F16, Codec::SHUFFLE_ZSTD), pca_k: None }
            }
            BenchStorage::Preset(name) => {
                let preset: StoragePreset = name.parse().map_err(|e| anyhow!("--storage {name}: {e}"))?;
                let mut e = ExpertConfig::builtin("bench", Builtin::Bicubic);
                preset.apply(&mut e);
                let st = e.storage().map_err(|e| anyhow!("--storage {name}: {e}"))?;
                let pca_k = match &st.feat_pca {
                    None => None,
                    Some(p) if p.k > 0 => Some(p.k),
                    Some(_) => bail!("--storage {name}: a variance-fraction PCA needs a basis fitted on real features; give a count (pca-16)"),
                };
                BenchLayout { image: CacheConfig::default().image_codec, sr: (st.sr_dtype, st.sr_codec), feat: (st.feat_dtype, st.feat_codec), pca_k }
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoaderBenchConfig {
    pub dir: PathBuf,
    pub samples: usize,
    pub batch_size: usize,
    pub workers: usize,
    pub batches: usize,
    /// LR patch side of the cached samples (HR = 4×).
    pub lr: usize,
    pub crop: Option<u32>,
    pub storage: BenchStorage,
    /// Timed rounds of each side (best kept).
    pub rounds: usize,
    /// Also time the loader with `cache_decoded` (decoded samples kept in RAM after the first epoch).
    pub cache_decoded: bool,
    /// Print a one-thread breakdown of where a sample's read time goes.
    pub profile: bool,
    pub train_steps: usize,
    /// Device of the training-step comparison (`cpu`, `cuda:0`).
    pub train_device: String,
    pub train_batch: usize,
    pub train_crop: u32,
}

impl Default for LoaderBenchConfig {
    fn default() -> Self {
        Self {
            dir: std::env::temp_dir().join("srcache-bench-loader"),
            samples: 48,
            batch_size: 8,
            workers: 2,
            batches: 24,
            lr: 64,
            crop: None,
            storage: BenchStorage::Raw,
            rounds: 3,
            cache_decoded: false,
            profile: false,
            train_steps: 12,
            train_device: "cpu".into(),
            train_batch: 2,
            train_crop: 32,
        }
    }
}

/// LitData's samples/s on this bench's sample (the best peer loader, issue #26's side-by-side run on this
/// machine): the bar is 3× it.
pub const LITDATA_SAMPLES_S: f64 = 135.0;

pub const EXPERTS: [(&str, usize); 3] = [("hat", 180), ("swinir", 180), ("rrdb", 64)];

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoaderBenchReport {
    /// Storage of the shards (`raw`, `zstd`, a preset name).
    pub storage: String,
    /// Codecs of lr/hr, sr and feat.
    pub image_codec: Codec,
    pub sr_codec: Codec,
    pub feat_codec: Codec,
    /// Stored MB a sample.
    pub sample_mb_stored: f64,
    /// The fp32 archive of a sample, MB.
    pub archive_mb: f64,
    /// Default loader: batches in the stored dtypes (u8 lr/hr, f16 sr/feat), converted on the device.
    pub loader_samples_s: f64,
    pub loader_gb_s: f64,
    /// Default loader, first epoch of a freshly opened dataset (checksums verified on this first read).
    pub first_epoch_samples_s: f64,
    /// The loader converting everything to f32 on the CPU, as the baseline does.
    pub loader_f32_samples_s: f64,
    pub loader_f32_gb_s: f64,
    /// With `cache_decoded` (second epoch on), when asked for.
    pub loader_cached_samples_s: Option<f64>,
    pub baseline_samples_s: f64,
    pub baseline_gb_s: f64,
    /// Seed-style: the same archives read one at a time on the consuming thread.
    pub seed_samples_s: f64,
    pub ratio: f64,
    pub ratio_seed: f64,
    pub ratio_first_epoch: f64,
    pub ratio_litdata: f64,
    pub rounds: usize,
    pub step_loader_ms: f64,
    pub step_synthetic_ms: f64,
    pub step_ratio: f64,
}

impl std::fmt::Display for LoaderBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        writeln!(
            f,
            "sample: 3 experts, sr 3x256x256, feat 180/180/64x64x64, lr+hr u8; storage {}: lr/hr {}, sr {}, feat {} ({:.2} MB stored, fp32 archive {:.2} MB)",
            self.storage, self.image_codec, self.sr_codec, self.feat_codec, self.sample_mb_stored, self.archive_mb
        )?;
        writeln!(f, "timed: best of {} rounds a side, interleaved", self.rounds)?;
        writeln!(f, "loader, stored dtypes (default): {:>7.1} samples/s  {:>6.2} GB/s delivered (u8/f16)", self.loader_samples_s, self.loader_gb_s)?;
        writeln!(
            f,
            "  first epoch, checksums verified: {:>5.1} samples/s  ({:.2}x the fp32 archive loader; goal >= 2x: {})",
            self.first_epoch_samples_s,
            self.ratio_first_epoch,
            met(self.ratio_first_epoch >= 2.0)
        )?;
        if let Some(c) = self.loader_cached_samples_s {
            writeln!(f, "  cache_decoded, second epoch on: {:>6.1} samples/s  ({:.2}x)", c, c / self.baseline_samples_s)?;
        }
        writeln!(
            f,
            "loader, f32 on the CPU:          {:>7.1} samples/s  {:>6.2} GB/s delivered (f32)",
            self.loader_f32_samples_s, self.loader_f32_gb_s
        )?;
        writeln!(f, "baseline (fp32 archive/sample):  {:>7.1} samples/s  {:>6.2} GB/s delivered (f32)", self.baseline_samples_s, self.baseline_gb_s)?;
        writeln!(f, "seed-style (archives read serially on the consuming thread): {:.1} samples/s", self.seed_samples_s)?;
        writeln!(
            f,
            "ratio loader/baseline:           {:>7.2}x  (goal >= 5x: {}; f32 loader: {:.2}x)",
            self.ratio,
            met(self.ratio >= 5.0),
            self.loader_f32_samples_s / self.baseline_samples_s
        )?;
        writeln!(f, "ratio loader/seed-style:         {:>7.2}x", self.ratio_seed)?;
        writeln!(
            f,
            "ratio loader/LitData ({LITDATA_SAMPLES_S}/s):    {:>7.2}x  (goal >= 3x: {})",
            self.ratio_litdata,
            met(self.ratio_litdata >= 3.0)
        )?;
        writeln!(f, "train step fed by loader:        {:>7.1} ms", self.step_loader_ms)?;
        writeln!(f, "train step, in-memory batches:   {:>7.1} ms", self.step_synthetic_ms)?;
        write!(f, "step time ratio:                 {:>7.3}x  (goal <= 1.05x: {})", self.step_ratio, met(self.step_ratio <= 1.05))
    }
}

fn smooth(rng: &mut impl Rng, c: usize, h: usize, w: usize, f: impl Fn(usize, f32) -> f32) -> Vec<f32> {
    let (gx, gy, b): (f32, f32, f32) = (rng.gen_range(-0.002..0.002), rng.gen_range(-0.002..0.002), rng.gen_range(0.3..0.7));
    let mut v = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                v.push(f(ch, b + gx * x as f32 + gy * y as f32 + 0.05 * ((x * 7 + y * 13 + ch) % 17) as f32 / 17.0));
            }
        }
    }
    v
}

/// Little-endian bytes of `v` in `dtype` (u8: values in [0, 1] quantised to 0..255).
fn to_bytes(dtype: DType, v: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::U8 => v.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect(),
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U16 => bail!("the bench stores no u16 tensors"),
    })
}

/// `v` as its stored dtype would give it back, as f32 (what the fp32 archive holds).
fn stored_values(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::U8 => v.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() / 255.0).collect(),
        DType::F16 => v.iter().map(|x| f16::from_f32(*x).to_f32()).collect(),
        DType::BF16 => v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Writes the shard dataset and the baseline's per-sample fp32 archives (same values, features with all their
/// channels) into `cfg.dir`. lr is the 4×4 box average of hr and sr is close to hr, so a residual over the
/// bicubic of lr compresses as SR outputs do.
pub fn write_realistic(cfg: &LoaderBenchConfig) -> Result<(PathBuf, Vec<PathBuf>)> {
    let lay = cfg.storage.layout()?;
    let (h, hh) = (cfg.lr, cfg.lr * 4);
    let shards = cfg.dir.join("shards");
    let base = cfg.dir.join("baseline");
    for d in [&shards, &base] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut specs = vec![TensorSpec::new("lr", DType::U8, &[3, h, h], lay.image), TensorSpec::new("hr", DType::U8, &[3, hh, hh], lay.image)];
    for (e, c) in EXPERTS {
        specs.push(TensorSpec::new(format!("sr/{e}"), lay.sr.0, &[3, hh, hh], lay.sr.1));
        specs.push(TensorSpec::new(format!("feat/{e}"), lay.feat.0, &[lay.pca_k.unwrap_or(c).min(c), h, h], lay.feat.1));
    }
    let mut schema = Schema::new(specs);
    schema.attrs.insert("scale".into(), "4".into());
    let (mut w, _) = DatasetWriter::create_or_resume(&shards, schema, DatasetOptions { target_shard_bytes: 256 << 20 })?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut archives = Vec::new();
    for i in 0..cfg.samples {
        let hr = smooth(&mut rng, 3, hh, hh, |_, v| v);
        let hr8 = to_bytes(DType::U8, &hr)?;
        let mut lr = vec![0f32; 3 * h * h];
        for (k, v) in lr.iter_mut().enumerate() {
            let (ch, y, x) = (k / (h * h), k / h % h, k % h);
            *v = (0..16).map(|j| hr8[(ch * hh + 4 * y + j / 4) * hh + 4 * x + j % 4] as f32).sum::<f32>() / 16.0 / 255.0;
        }
        let lr8 = to_bytes(DType::U8, &lr)?;
        let mut raws: Vec<Vec<u8>> = vec![lr8.clone(), hr8.clone()];
        let mut named: Vec<(String, Tensor)> = vec![
            ("lr".into(), Tensor::f_from_slice(&lr8)?.f_view([3, h as i64, h as i64])?.f_to_kind(Kind::Float)? / 255.0),
            ("hr".into(), Tensor::f_from_slice(&hr8)?.f_view([3, hh as i64, hh as i64])?.f_to_kind(Kind::Float)? / 255.0),
        ];
        for (e, c) in EXPERTS {
            let sr: Vec<f32> = hr.iter().map(|v| v * 0.98).collect();
            let ft = smooth(&mut rng, c, h, h, |ch, v| v * (1 + ch % 5) as f32);
            let kept = lay.pca_k.unwrap_or(c).min(c) * h * h;
            raws.push(to_bytes(lay.sr.0, &sr)?);
            raws.push(to_bytes(lay.feat.0, &ft[..kept])?);
            let arch =
                [(format!("sr_{e}"), stored_values(lay.sr.0, &sr), [3, hh, hh]), (format!("feat_{e}"), stored_values(lay.feat.0, &ft), [c, h, h])];
            for (name, f, shape) in arch {
                named.push((name, Tensor::f_from_slice(&f)?.f_view([shape[0] as i64, shape[1] as i64, shape[2] as i64])?));
            }
        }
        let meta = SampleMeta {
            id: format!("b{i:05}"),
            source: format!("img{i:05}.png"),
            patch: PatchBox { x: 0, y: 0, w: h as u32, h: h as u32 },
            variant: "clean".into(),
            psnr: Default::default(),
        };
        let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
        w.write(&meta, &refs)?;
        let p = base.join(format!("{i:05}.pt"));
        Tensor::save_multi(&named, &p).ctx("save_multi")?;
        archives.push(p);
    }
    w.finish()?;
    Ok((shards, archives))
}

/// One batch the baseline's way: `load_multi` one fp32 archive per sample, the same crop and a dihedral
/// transform with torch ops, columns stacked; the bytes delivered.
fn archive_batch(archives: &[PathBuf], b: usize, bs: usize, crop: Option<u32>, rng: &mut impl Rng) -> Result<u64> {
    let mut cols: Vec<Vec<Tensor>> = Vec::new();
    for k in 0..bs {
        let p = &archives[(b * bs + k) % archives.len()];
        let ts = Tensor::load_multi(p).ctx("load_multi")?;
        let d: u8 = rng.gen_range(0..8);
        let lr_side = ts[0].1.size()[1];
        let c = crop.map(|c| c as i64).unwrap_or(lr_side);
        let (y0, x0) = (rng.gen_range(0..=lr_side - c), rng.gen_range(0..=lr_side - c));
        if cols.is_empty() {
            cols = (0..ts.len()).map(|_| Vec::new()).collect();
        }
        for (j, (_, t)) in ts.iter().enumerate() {
            let r = t.size()[1] / lr_side;
            let mut x = t.f_narrow(1, y0 * r, c * r)?.f_narrow(2, x0 * r, c * r)?;
            if d & 1 != 0 {
                x = x.f_flip([2])?;
            }
            if d & 2 != 0 {
                x = x.f_flip([1])?;
            }
            if d & 4 != 0 {
                x = x.f_transpose(1, 2)?;
            }
            cols[j].push(x);
        }
    }
    let mut bytes = 0;
    for col in &cols {
        let st = Tensor::f_stack(col, 0)?.f_contiguous()?;
        bytes += st.numel() as u64 * 4;
    }
    Ok(bytes)
}

/// The fp32-archive baseline: `batches` batches from `cfg.workers` threads; (seconds, bytes delivered).
pub(crate) fn baseline(archives: &[PathBuf], cfg: &LoaderBenchConfig, batches: usize) -> Result<(f64, u64)> {
    let workers = cfg.workers.max(1);
    let bs = cfg.batch_size;
    let t0 = Instant::now();
    let results: Vec<Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || -> Result<u64> {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
                    let mut bytes = 0u64;
                    for b in (w..batches).step_by(workers) {
                        bytes += archive_batch(archives, b, bs, cfg.crop, &mut rng)?;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("baseline worker panicked")))).collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok((t0.elapsed().as_secs_f64(), total))
}

/// The seed-style loader: the same archives, crops and flips, read one sample after another on the thread
/// that consumes the batches (a `torch.load` per sample in `__getitem__`, no worker processes); seconds.
fn seed_style(archives: &[PathBuf], cfg: &LoaderBenchConfig, batches: usize) -> Result<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let t0 = Instant::now();
    for b in 0..batches {
        archive_batch(archives, b, cfg.batch_size, cfg.crop, &mut rng)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn loader_run(ds: &Arc<Dataset>, cfg: &LoaderBenchConfig, batches: usize, stored_dtype: bool) -> Result<(f64, u64)> {
    let lc = LoaderConfig { batch_size: cfg.batch_size, crop: cfg.crop, workers: cfg.workers, prefetch: 2, stored_dtype, ..Default::default() };
    let t0 = Instant::now();
    let mut l = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default())?;
    let mut bytes = 0;
    for _ in 0..batches {
        bytes += l.next_batch()?.bytes();
    }
    Ok((t0.elapsed().as_secs_f64(), bytes))
}

/// The loader with `cache_decoded`: one epoch to fill the cache, then the best of `rounds` timed runs of
/// `batches` batches through the same loader; samples/s.
fn cached_run(ds: &Arc<Dataset>, cfg: &LoaderBenchConfig) -> Result<f64> {
    let lc =
        LoaderConfig { batch_size: cfg.batch_size, crop: cfg.crop, workers: cfg.workers, prefetch: 2, cache_decoded: true, ..Default::default() };
    let mut l = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default())?;
    for _ in 0..l.batches_per_epoch() {
        l.next_batch()?;
    }
    let mut best = f64::MAX;
    for _ in 0..cfg.rounds.max(1) {
        let t0 = Instant::now();
        for _ in 0..cfg.batches {
            l.next_batch()?;
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok((cfg.batches * cfg.batch_size) as f64 / best)
}

/// `--profile`: a one-thread breakdown of where a sample's read goes, µs a sample (best of 3 passes over every
/// sample, payloads already verified), each stage timed on its own; then a 1-worker loader's whole time a
/// sample, whose remainder over the decode stages is crop + dihedral + batch assembly.
fn profile(ds: &Arc<Dataset>, cfg: &LoaderBenchConfig) -> Result<Vec<String>> {
    use srcache_formats::residual::bicubic_u8_into;
    let schema = ds.schema().ok_or_else(|| anyhow!("no shards"))?.clone();
    let mut best: std::collections::BTreeMap<String, f64> = Default::default();
    let (mut buf, mut lr, mut up) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut acc: std::collections::BTreeMap<String, f64> = Default::default();
        let mut add = |k: String, t: Instant| *acc.entry(k).or_default() += t.elapsed().as_secs_f64();
        for g in 0..ds.len() {
            let (shard, i) = ds.sample(g)?;
            let mut base_done = false;
            for (t, spec) in schema.tensors.iter().enumerate() {
                let v = shard.tensor_at(i, t)?;
                let class = spec.name.split('/').next().unwrap_or("?").to_string();
                buf.resize(v.raw_len(), 0);
                match spec.codec {
                    Codec::Raw => {
                        let t0 = Instant::now();
                        buf.copy_from_slice(v.raw()?.ok_or_else(|| anyhow!("raw tensor without bytes"))?);
                        add(format!("{class} raw: copy"), t0);
                    }
                    Codec::ResidualU8 { .. } => {
                        let t0 = Instant::now();
                        v.decode_into(&mut buf)?;
                        add(format!("{class} residual_u8: one-tensor path (lr decode + B per expert) [not in the loader]"), t0);
                        let z = TensorSpec::new("z", DType::U8, &[v.raw_len()], Codec::ZSTD);
                        let t0 = Instant::now();
                        srcache_formats::decode_payload(&z, v.stored(), &mut buf)?;
                        add(format!("{class} residual_u8: zstd"), t0);
                        let rb = v.residual_base().ok_or_else(|| anyhow!("residual without base"))?;
                        if !base_done {
                            let t0 = Instant::now();
                            let lv = shard.tensor_at(i, rb.lr)?;
                            lr.resize(lv.raw_len(), 0);
                            lv.decode_into(&mut lr)?;
                            up.resize(v.raw_len(), 0);
                            bicubic_u8_into(&lr, rb.h, rb.w, rb.s, &mut up);
                            add(format!("{class} residual_u8: B(lr) once a sample"), t0);
                            base_done = true;
                        }
                        let t0 = Instant::now();
                        v.decode_into_upscaled(&up, &mut buf)?;
                        add(format!("{class} residual_u8: zstd + add B (loader path)"), t0);
                    }
                    Codec::AffineU8Zstd { .. } => {
                        let t0 = Instant::now();
                        v.decode_into(&mut buf)?;
                        add(format!("{class} affine_u8_zstd: whole decode"), t0);
                        let n = spec.channels() * 8 + spec.numel();
                        let z = TensorSpec::new("z", DType::U8, &[n], Codec::ZSTD);
                        let mut zb = vec![0u8; n];
                        let t0 = Instant::now();
                        srcache_formats::decode_payload(&z, v.stored(), &mut zb)?;
                        add(format!("{class} affine_u8_zstd: its zstd part"), t0);
                    }
                    c => {
                        let t0 = Instant::now();
                        v.decode_into(&mut buf)?;
                        add(format!("{class} {c}: decode"), t0);
                    }
                }
            }
        }
        for (k, v) in acc {
            let e = best.entry(k).or_insert(f64::MAX);
            *e = e.min(v);
        }
    }
    let n = ds.len().max(1) as f64;
    let mut out = vec![format!("profile, one thread, µs a sample (best of 3 passes over {} samples):", ds.len())];
    for (k, v) in &best {
        out.push(format!("  {:>8.1}  {k}", v / n * 1e6));
    }
    out.extend(level_sweep(ds, &schema)?);
    let one = LoaderBenchConfig { workers: 1, ..cfg.clone() };
    let batches = (ds.len() / cfg.batch_size).max(1);
    loader_run(ds, &one, batches, true)?;
    let (t, _) = loader_run(ds, &one, batches, true)?;
    out.push(format!("  {:>8.1}  loader, 1 worker, whole sample (decode + crop + dihedral + batch)", t / (batches * cfg.batch_size) as f64 * 1e6));
    Ok(out)
}

/// What a lower zstd level would change for the feature tensors (decode time a sample, stored size): the
/// same decoded features re-encoded at each level. The level is part of the codec spec, so this is a cache
/// setting (`feat_codec = { kind = "shuffle_zstd", level = -3 }`), not a format change.
fn level_sweep(ds: &Arc<Dataset>, schema: &Schema) -> Result<Vec<String>> {
    let feats: Vec<usize> = (0..schema.tensors.len())
        .filter(|&t| schema.tensors[t].name.starts_with("feat/") && schema.tensors[t].codec.zstd_level().is_some())
        .collect();
    if feats.is_empty() {
        return Ok(Vec::new());
    }
    let n = ds.len().min(8);
    let mut raws = Vec::new();
    for g in 0..n {
        let (shard, i) = ds.sample(g)?;
        for &t in &feats {
            raws.push((t, shard.tensor_at(i, t)?.decode()?));
        }
    }
    let mut out = vec![format!("feature codecs by zstd level (the same features re-encoded, {n} samples; one thread):")];
    let mut buf = Vec::new();
    for level in [1, -1, -3, -5, -7] {
        let (mut bytes, mut raw_bytes, mut best) = (0usize, 0usize, f64::MAX);
        let mut enc = Vec::new();
        for (t, raw) in &raws {
            let mut spec = schema.tensors[*t].clone();
            spec.codec = match spec.codec {
                Codec::ShuffleZstd { .. } => Codec::ShuffleZstd { level },
                Codec::AffineU8Zstd { .. } => Codec::AffineU8Zstd { level },
                Codec::Zstd { .. } => Codec::Zstd { level },
                c => c,
            };
            let e = srcache_formats::encode(&spec, raw)?;
            bytes += e.bytes.len();
            raw_bytes += raw.len();
            enc.push((spec, e.bytes));
        }
        for _ in 0..3 {
            let t0 = Instant::now();
            for (spec, b) in &enc {
                buf.resize(spec.raw_len().unwrap_or(0), 0);
                srcache_formats::decode_payload(spec, b, &mut buf)?;
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        out.push(format!(
            "  level {level:>2}: {:>8.1} µs a sample to decode ({:.2} GB/s), stored {:.3} MB a sample ({:.2}x smaller than raw)",
            best / n as f64 * 1e6,
            raw_bytes as f64 / best / 1e9,
            bytes as f64 / n as f64 / 1e6,
            raw_bytes as f64 / bytes as f64
        ));
    }
    Ok(out)
}

pub fn run(cfg: &LoaderBenchConfig, log: &mut dyn FnMut(&str)) -> Result<LoaderBenchReport> {
    let lay = cfg.storage.layout()?;
    log(&format!("writing {} samples (shards: {}; fp32 archives) under {}", cfg.samples, cfg.storage, cfg.dir.display()));
    let (shards, archives) = write_realistic(cfg)?;
    let ds = Arc::new(Dataset::open(&shards)?);
    let stored: u64 = ds.manifest().iter().map(|r| r.bytes).sum();
    let archive_bytes: u64 = archives.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    // Data-loading workers run torch single-threaded (as PyTorch's DataLoader workers do): otherwise OpenMP's
    // spinning intra-op threads steal the 2 cores from the workers on both sides.
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    // First epoch of the just-opened dataset: every payload's checksum is verified on this first read (later
    // epochs re-read verified payloads, which is what the timed rounds below measure).
    let epoch_batches = (ds.len() / cfg.batch_size).max(1);
    let (t_first, _) = loader_run(&ds, cfg, epoch_batches, true)?;
    let first_epoch_samples_s = (epoch_batches * cfg.batch_size) as f64 / t_first;
    if cfg.profile {
        for line in profile(&ds, cfg)? {
            log(&line);
        }
    }
    // Warm every path once (page cache, allocator) before timing; then the best of `rounds` rounds,
    // interleaved so a noisy neighbour on the VM hits all sides alike.
    loader_run(&ds, cfg, 2, true)?;
    loader_run(&ds, cfg, 2, false)?;
    baseline(&archives, cfg, 2)?;
    let seed_batches = cfg.batches.div_ceil(2).max(1);
    let (mut tl, mut bl, mut tf, mut bf, mut tb, mut bb, mut ts) = (f64::MAX, 0, f64::MAX, 0, f64::MAX, 0, f64::MAX);
    for round in 0..cfg.rounds.max(1) {
        let (t, b) = loader_run(&ds, cfg, cfg.batches, true)?;
        (tl, bl) = if t < tl { (t, b) } else { (tl, bl) };
        let (t, b) = loader_run(&ds, cfg, cfg.batches, false)?;
        (tf, bf) = if t < tf { (t, b) } else { (tf, bf) };
        let (t, b) = baseline(&archives, cfg, cfg.batches)?;
        (tb, bb) = if t < tb { (t, b) } else { (tb, bb) };
        ts = ts.min(seed_style(&archives, cfg, seed_batches)?);
        log(&format!(
            "round {round}: {} batches: loader {tl:.3}s, f32 loader {tf:.3}s, baseline {tb:.3}s; seed-style {seed_batches} batches {ts:.3}s (best so far)",
            cfg.batches
        ));
    }
    let loader_cached_samples_s = if cfg.cache_decoded { Some(cached_run(&ds, cfg)?) } else { None };
    let n = (cfg.batches * cfg.batch_size) as f64;
    let seed_samples_s = (seed_batches * cfg.batch_size) as f64 / ts;
    tch::set_num_threads(threads);

    // Training step time: default fusion model, fed by the loader vs by the same batches held in memory.
    let mut tc = TrainConfig { device: cfg.train_device.clone(), steps: cfg.train_steps as u64 + 2, ..Default::default() };
    let device = tc.device()?;
    // As the trainer does on CUDA: the loader's workers hand over batches already in pinned memory.
    let pin_device = device.is_cuda().then_some(device);
    let lc = LoaderConfig {
        batch_size: cfg.train_batch,
        crop: Some(cfg.train_crop),
        workers: cfg.workers.max(1),
        prefetch: 2,
        pin_device,
        ..Default::default()
    };
    let mut loader = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default())?;
    tc.model.experts = loader.experts.clone();
    tc.model.feat_channels = loader.feat_channels.clone();
    // The in-memory baseline holds its batches where the model is (on the GPU when training there): a step
    // fed by it pays no data cost at all, so the ratio is exactly what the loader adds.
    // Deep copies: the in-memory side owns its batches outright.
    let on_device = |b: Batch| b.try_map(|t| t.copy().f_to_device(device)).map_err(anyhow::Error::from);
    let mut mem = MemorySource {
        batches: (0..4).map(|_| loader.next_batch().map_err(anyhow::Error::from).and_then(on_device)).collect::<Result<_>>()?,
        next: 0,
    };
    // Per-step times, loader-fed and in-memory steps alternating on two identical trainers, medians compared:
    // a background hiccup on the VM then lands on both sides instead of on whichever ran during it.
    let mut tr_loader = Trainer::new(&tc)?;
    let mut tr_mem = Trainer::new(&tc)?;
    tr_loader.train_step(&mut loader)?;
    tr_mem.train_step(&mut mem)?;
    let (mut ld_ms, mut syn_ms) = (Vec::new(), Vec::new());
    for _ in 0..cfg.train_steps {
        let t0 = Instant::now();
        tr_loader.train_step(&mut loader)?;
        ld_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t0 = Instant::now();
        tr_mem.train_step(&mut mem)?;
        syn_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ld, syn) = (median(&mut ld_ms), median(&mut syn_ms));
    log(&format!("train step (median of {}): loader {ld:.1} ms, in-memory {syn:.1} ms", cfg.train_steps));
    let baseline_samples_s = n / tb;
    Ok(LoaderBenchReport {
        storage: cfg.storage.to_string(),
        image_codec: lay.image,
        sr_codec: lay.sr.1,
        feat_codec: lay.feat.1,
        sample_mb_stored: stored as f64 / ds.len().max(1) as f64 / 1e6,
        archive_mb: archive_bytes as f64 / archives.len().max(1) as f64 / 1e6,
        loader_samples_s: n / tl,
        loader_gb_s: bl as f64 / tl / 1e9,
        first_epoch_samples_s,
        loader_f32_samples_s: n / tf,
        loader_f32_gb_s: bf as f64 / tf / 1e9,
        loader_cached_samples_s,
        baseline_samples_s,
        baseline_gb_s: bb as f64 / tb / 1e9,
        seed_samples_s,
        ratio: tb / tl,
        ratio_seed: n / tl / seed_samples_s,
        ratio_first_epoch: first_epoch_samples_s / baseline_samples_s,
        ratio_litdata: n / tl / LITDATA_SAMPLES_S,
        rounds: cfg.rounds.max(1),
        step_loader_ms: ld,
        step_synthetic_ms: syn,
        step_ratio: ld / syn,
    })
}
