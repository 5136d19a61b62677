//! Streams training batches out of a memory-mapped [`Dataset`].
//!
//! Determinism: the sample order of an epoch comes from `(seed, epoch)`, each sample's crop box and dihedral
//! transform from `(seed, epoch, slot in the epoch)`. Worker `w` builds global batches `w, w+W, w+2W, ...` into
//! its own bounded channel and the consumer reads the channels round-robin, so the stream is identical for any
//! worker count and a [`LoaderPosition`] is all a checkpoint needs to resume mid-epoch.

use crate::config::{LoaderConfig, ShuffleMode};
use crate::dihedral::{transform_copy, transform_f32};
use crate::error::{Result, TorchCtx, TrainerError};
use crossbeam_channel::{bounded, Receiver, Sender};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use srcache_formats::residual::bicubic_u8_into;
use srcache_formats::{Codec, DType, Dataset, ResidualBase};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// One training batch, NCHW. With `LoaderConfig::stored_dtype` (the default) every tensor keeps the dtype the
/// cache stores (u8 lr/hr, f16 sr/feat): half the bytes to assemble and to copy to the GPU, where
/// [`Batch::to_device`] makes them f32 (u8 scaled to [0,1]; features keep their cached value range).
/// Otherwise the loader converts on the CPU and every tensor is already f32.
#[derive(Debug)]
pub struct Batch {
    pub lr: Tensor,
    pub hr: Tensor,
    pub sr: Vec<Tensor>,
    pub feat: Vec<Tensor>,
    /// Global dataset indices of the samples, in batch order.
    pub indices: Vec<usize>,
    /// The crop box and dihedral transform each sample got, in batch order.
    pub aug: Vec<Aug>,
}

/// What the loader did to one sample: a square crop of side `crop` at (`y0`, `x0`) in LR pixels (every other
/// tensor is cropped at the same place scaled to its resolution), then dihedral transform `d` (bit 2: transpose,
/// bit 1: vertical flip, bit 0: horizontal flip; transpose first). The Python Dataset reproduces it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aug {
    pub y0: usize,
    pub x0: usize,
    pub crop: usize,
    pub d: u8,
}

impl Batch {
    /// The same batch with `f` applied to every tensor (indices and augmentations kept).
    pub fn try_map<E>(&self, mut f: impl FnMut(&Tensor) -> std::result::Result<Tensor, E>) -> std::result::Result<Batch, E> {
        Ok(Batch {
            lr: f(&self.lr)?,
            hr: f(&self.hr)?,
            sr: self.sr.iter().map(&mut f).collect::<std::result::Result<_, _>>()?,
            feat: self.feat.iter().map(&mut f).collect::<std::result::Result<_, _>>()?,
            indices: self.indices.clone(),
            aug: self.aug.clone(),
        })
    }

    /// The batch on `device` as f32 (u8 tensors scaled by 1/255), ready for the model.
    pub fn to_device(&self, device: Device) -> Result<Batch> {
        let mv = |t: &Tensor| -> Result<Tensor> {
            let t = if device == Device::Cpu || t.device() == device {
                t.shallow_clone()
            } else {
                // Pinned host memory lets the copy overlap with compute (the loader's workers pin when told the
                // device; pinning here costs the training thread a host copy); the copy moves the stored dtype.
                let host = if t.f_is_pinned(device)? { t.shallow_clone() } else { t.f_pin_memory(device)? };
                host.f_to_device_(device, t.kind(), true, false).ctx("batch to device")?
            };
            match t.kind() {
                Kind::Float => Ok(t),
                Kind::Uint8 => t.f_to_kind(Kind::Float)?.f_mul_scalar(1.0 / 255.0).ctx("u8 to f32"),
                _ => t.f_to_kind(Kind::Float).ctx("to f32"),
            }
        };
        self.try_map(mv)
    }

    /// Bytes held by the batch's tensors, in their delivered dtypes.
    pub fn bytes(&self) -> u64 {
        let n = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        n(&self.lr) + n(&self.hr) + self.sr.iter().map(n).sum::<u64>() + self.feat.iter().map(n).sum::<u64>()
    }
}

/// The next batch the loader will deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoaderPosition {
    pub epoch: u64,
    pub batch: u64,
}

#[derive(Debug, Clone)]
struct Field {
    pos: usize,
    dtype: DType,
    shape: [usize; 3],
    /// Pixels of this tensor per LR pixel, as num/den (hr/sr: s/1, lr: 1/1, feat: fh/h).
    num: usize,
    den: usize,
    norm: f32,
    /// What the batch tensor holds: the stored dtype, or f32 when converting on the CPU.
    out: Kind,
    /// A residual_u8 tensor's base (lr position, h, w, s): decoded against B(lr) computed once per sample.
    base: Option<ResidualBase>,
    /// Stored with a codec (not zero-copy): what `cache_decoded` keeps.
    coded: bool,
}

/// Which tensors to read and how to crop them; shared read-only by the workers.
#[derive(Debug)]
struct Plan {
    lr: Field,
    hr: Field,
    sr: Vec<Field>,
    feat: Vec<Field>,
    h: usize,
    w: usize,
    crop: usize,
    align: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: independent streams per (seed, epoch, slot).
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x632B_E59B_D9B4_E8B5);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Loader {
    ds: Arc<Dataset>,
    plan: Arc<Plan>,
    cfg: LoaderConfig,
    indices: Arc<Vec<usize>>,
    pos: LoaderPosition,
    rx: Vec<Receiver<Result<Batch>>>,
    threads: Vec<JoinHandle<()>>,
    next_global: u64,
    start_global: u64,
    /// `cache_decoded`: shared by the workers and kept across `seek`.
    decoded: Option<Arc<DecodedCache>>,
    pub experts: Vec<String>,
    pub feat_channels: Vec<usize>,
}

impl Loader {
    /// Names of the experts in a dataset (every `sr/<name>`), sorted.
    pub fn dataset_experts(ds: &Dataset) -> Vec<String> {
        let mut v: Vec<String> =
            ds.schema().map(|s| s.tensors.iter().filter_map(|t| t.name.strip_prefix("sr/").map(str::to_string)).collect()).unwrap_or_default();
        v.sort();
        v
    }

    /// `indices`: the subset of global sample indices to iterate (e.g. the training split).
    pub fn new(ds: Arc<Dataset>, indices: Vec<usize>, cfg: &LoaderConfig, start: LoaderPosition) -> Result<Self> {
        let bad = |why: String| TrainerError::Data { path: ds.dir().to_path_buf(), why };
        let schema = ds.schema().ok_or_else(|| bad("dataset has no shards".into()))?.clone();
        if cfg.batch_size == 0 || indices.len() < cfg.batch_size {
            return Err(bad(format!("{} samples cannot fill one batch of {}", indices.len(), cfg.batch_size)));
        }
        let experts = if cfg.experts.is_empty() { Self::dataset_experts(&ds) } else { cfg.experts.clone() };
        let field = |name: &str, h: usize| -> Result<Field> {
            let pos = schema.index_of(name).ok_or_else(|| bad(format!("schema has no tensor {name}")))?;
            let spec = &schema.tensors[pos];
            if spec.shape.len() != 3 {
                return Err(bad(format!("{name}: expected CHW, got {:?}", spec.shape)));
            }
            let norm = if spec.dtype == DType::U8 { 1.0 / 255.0 } else { 1.0 };
            let out = match spec.dtype {
                DType::U8 if cfg.stored_dtype => Kind::Uint8,
                DType::F16 if cfg.stored_dtype => Kind::Half,
                DType::BF16 if cfg.stored_dtype => Kind::BFloat16,
                _ => Kind::Float,
            };
            let base = if spec.codec.needs_base() { Some(schema.residual_base(pos).map_err(bad)?) } else { None };
            let coded = spec.codec != Codec::Raw;
            Ok(Field {
                pos,
                dtype: spec.dtype,
                shape: [spec.shape[0], spec.shape[1], spec.shape[2]],
                num: spec.shape[1],
                den: h.max(1),
                norm,
                out,
                base,
                coded,
            })
        };
        let mut lr = field("lr", 1)?;
        let (h, w) = (lr.shape[1], lr.shape[2]);
        lr.den = h;
        let hr = field("hr", h)?;
        let sr = experts.iter().map(|e| field(&format!("sr/{e}"), h)).collect::<Result<Vec<_>>>()?;
        let mut feat = Vec::new();
        let mut feat_channels = Vec::new();
        for e in &experts {
            let name = format!("feat/{e}");
            if cfg.load_feats && schema.index_of(&name).is_some() {
                let f = field(&name, h)?;
                feat_channels.push(f.shape[0]);
                feat.push(f);
            } else {
                feat_channels.push(0);
            }
        }
        // Every tensor's crop box must land on whole pixels: align LR offsets to the coarsest tensor.
        let mut align = 1;
        for f in [&hr].into_iter().chain(&sr).chain(&feat) {
            if (f.shape[1] * w) != (f.shape[2] * h) {
                return Err(bad(format!("tensor at position {} has aspect {:?} unlike lr {h}x{w}", f.pos, f.shape)));
            }
            if f.num < f.den {
                align = align.max(f.den / f.num.max(1));
            }
        }
        let crop = cfg.crop.map(|c| c as usize).unwrap_or(h.min(w));
        if crop == 0 || crop > h.min(w) || !crop.is_multiple_of(align) {
            return Err(bad(format!("crop {crop} must be in 1..={} and a multiple of {align}", h.min(w))));
        }
        let plan = Arc::new(Plan { lr, hr, sr, feat, h, w, crop, align });
        let n_fields = 2 + plan.sr.len() + plan.feat.len();
        let decoded = cfg.cache_decoded.then(|| Arc::new(DecodedCache::new(ds.len(), n_fields, cfg.cache_decoded_mib)));
        let mut l = Self {
            ds,
            plan,
            cfg: cfg.clone(),
            indices: Arc::new(indices),
            pos: start,
            rx: Vec::new(),
            threads: Vec::new(),
            next_global: 0,
            start_global: 0,
            decoded,
            experts,
            feat_channels,
        };
        l.spawn(start)?;
        Ok(l)
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.indices.len() / self.cfg.batch_size) as u64
    }

    pub fn position(&self) -> LoaderPosition {
        self.pos
    }

    fn spawn(&mut self, start: LoaderPosition) -> Result<()> {
        self.stop();
        let bpe = self.batches_per_epoch();
        let g0 = start.epoch * bpe + start.batch.min(bpe);
        let workers = self.cfg.workers.max(1);
        for w in 0..workers {
            let (tx, rx) = bounded(self.cfg.prefetch.max(1));
            let job = Job {
                ds: self.ds.clone(),
                plan: self.plan.clone(),
                cfg: self.cfg.clone(),
                indices: self.indices.clone(),
                bpe,
                decoded: self.decoded.clone(),
            };
            let first = g0 + w as u64;
            let step = workers as u64;
            // Named so profiles and debuggers can tell loader workers from the trainer's threads.
            let t = std::thread::Builder::new()
                .name(format!("loader-{w}"))
                .spawn(move || job.run(first, step, tx))
                .map_err(|e| TrainerError::Loader { why: format!("cannot start worker thread: {e}") })?;
            self.threads.push(t);
            self.rx.push(rx);
        }
        self.start_global = g0;
        self.next_global = g0;
        self.pos = start;
        Ok(())
    }

    fn stop(&mut self) {
        self.rx.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Restarts the stream at `pos` (used on resume).
    pub fn seek(&mut self, pos: LoaderPosition) -> Result<()> {
        self.spawn(pos)
    }

    /// Next batch (the stream is endless: epochs follow each other).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let k = ((self.next_global - self.start_global) % self.rx.len() as u64) as usize;
        let b = self.rx[k].recv().map_err(|_| TrainerError::Loader { why: "worker exited".into() })??;
        self.next_global += 1;
        let bpe = self.batches_per_epoch();
        self.pos = LoaderPosition { epoch: self.next_global / bpe, batch: self.next_global % bpe };
        Ok(b)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Job {
    ds: Arc<Dataset>,
    plan: Arc<Plan>,
    cfg: LoaderConfig,
    indices: Arc<Vec<usize>>,
    bpe: u64,
    decoded: Option<Arc<DecodedCache>>,
}

/// Decoded tensors of samples already read (`LoaderConfig::cache_decoded`), one slot per (sample, field),
/// filled once and read by every worker; bytes are admitted while the budget lasts and never evicted, so
/// a dataset larger than the budget keeps a fixed part decoded instead of thrashing.
struct DecodedCache {
    slots: Vec<OnceLock<Box<[u8]>>>,
    n_fields: usize,
    used: AtomicU64,
    budget: u64,
}

impl DecodedCache {
    fn new(samples: usize, n_fields: usize, mib: u64) -> Self {
        Self {
            slots: (0..samples * n_fields).map(|_| OnceLock::new()).collect(),
            n_fields,
            used: AtomicU64::new(0),
            budget: mib.saturating_mul(1 << 20),
        }
    }

    fn get(&self, sample: usize, field: usize) -> Option<&[u8]> {
        self.slots.get(sample * self.n_fields + field)?.get().map(|b| &b[..])
    }

    /// Keeps a copy of `bytes` if the budget allows (racing workers may both try: one copy is kept).
    fn offer(&self, sample: usize, field: usize, bytes: &[u8]) {
        let Some(slot) = self.slots.get(sample * self.n_fields + field) else { return };
        let n = bytes.len() as u64;
        if slot.get().is_some() {
            return;
        }
        if self.used.fetch_add(n, Ordering::Relaxed) + n > self.budget {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return;
        }
        if slot.set(bytes.into()).is_err() {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// A worker's reused decode buffers.
#[derive(Default)]
struct Scratch {
    /// The tensor being decoded.
    tensor: Vec<u8>,
    /// The transpose plane of `dihedral`.
    transpose: Vec<u8>,
    /// This sample's decoded lr, when lr is stored with a codec.
    lr: Vec<u8>,
    /// This sample's B(lr) for residual_u8 tensors.
    up: Vec<u8>,
}

/// The epoch's sample order.
pub fn epoch_order(ds: &Dataset, indices: &[usize], mode: ShuffleMode, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch));
    match mode {
        ShuffleMode::Global => {
            let mut v = indices.to_vec();
            v.shuffle(&mut rng);
            v
        }
        ShuffleMode::ShardLocal => {
            let mut starts = vec![0usize];
            for s in ds.shards() {
                starts.push(starts[starts.len() - 1] + s.len());
            }
            let mut groups: Vec<Vec<usize>> = vec![Vec::new(); ds.shards().len().max(1)];
            for &g in indices {
                let k = starts.partition_point(|&s| s <= g).saturating_sub(1).min(groups.len() - 1);
                groups[k].push(g);
            }
            groups.shuffle(&mut rng);
            groups
                .into_iter()
                .flat_map(|mut g| {
                    g.shuffle(&mut rng);
                    g
                })
                .collect()
        }
    }
}

impl Job {
    fn run(self, first: u64, step: u64, tx: Sender<Result<Batch>>) {
        let mut order: (u64, Vec<usize>) = (u64::MAX, Vec::new());
        let mut scratch = Scratch::default();
        let mut g = first;
        loop {
            let epoch = g / self.bpe;
            let b = (g % self.bpe) as usize;
            if order.0 != epoch {
                order = (epoch, epoch_order(&self.ds, &self.indices, self.cfg.shuffle, self.cfg.seed, epoch));
            }
            let bs = self.cfg.batch_size;
            let slots = (b * bs..(b + 1) * bs).collect::<Vec<_>>();
            let res = self.build(epoch, &slots, &order.1, &mut scratch);
            let failed = res.is_err();
            if tx.send(res).is_err() || failed {
                return;
            }
            g += step;
        }
    }

    fn build(&self, epoch: u64, slots: &[usize], order: &[usize], sc: &mut Scratch) -> Result<Batch> {
        let p = &*self.plan;
        let bs = slots.len();
        let c = p.crop;
        let alloc = |f: &Field| -> Result<Tensor> {
            let side = (c * f.num / f.den) as i64;
            Tensor::f_empty([bs as i64, f.shape[0] as i64, side, side], (f.out, Device::Cpu)).ctx("batch alloc")
        };
        let lr = alloc(&p.lr)?;
        let hr = alloc(&p.hr)?;
        let sr = p.sr.iter().map(alloc).collect::<Result<Vec<_>>>()?;
        let feat = p.feat.iter().map(alloc).collect::<Result<Vec<_>>>()?;
        let mut indices = Vec::with_capacity(bs);
        let mut augs = Vec::with_capacity(bs);
        for (bi, &slot) in slots.iter().enumerate() {
            let global = order[slot];
            indices.push(global);
            let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.cfg.seed, epoch), slot as u64 + 1));
            let ny = (p.h - c) / p.align;
            let nx = (p.w - c) / p.align;
            let y0 = rng.gen_range(0..=ny) * p.align;
            let x0 = rng.gen_range(0..=nx) * p.align;
            // Crops are always square, so all 8 dihedral transforms (transpose included) keep the shape.
            let d = if self.cfg.dihedral { rng.gen_range(0..8u8) } else { 0 };
            augs.push(Aug { y0, x0, crop: c, d });
            let (shard, i) = self.ds.sample(global)?;
            // lr first: its bytes (stored raw, from the decoded cache, or decoded once into `sc.lr`) are both the
            // batch's lr and the base of every residual_u8 tensor, whose B(lr) is computed at most once per
            // sample (at the scale of the first residual tensor that needs it), not once per expert.
            let decoded = |k: usize, f: &Field| if f.coded { self.decoded.as_deref().and_then(|dc| dc.get(global, k)) } else { None };
            let lr_cached = decoded(0, &p.lr);
            let lr_view = shard.tensor_at(i, p.lr.pos)?;
            let lr_bytes: &[u8] = match (lr_cached, lr_view.raw()?) {
                (Some(b), _) | (None, Some(b)) => b,
                (None, None) => {
                    sc.lr.resize(lr_view.raw_len(), 0);
                    lr_view.decode_into(&mut sc.lr)?;
                    &sc.lr
                }
            };
            let mut up_scale: Option<usize> = None;
            let fields = [(&p.lr, &lr), (&p.hr, &hr)].into_iter().chain(p.sr.iter().zip(&sr)).chain(p.feat.iter().zip(&feat));
            for (k, (f, t)) in fields.enumerate() {
                let sample_err = |why: String| TrainerError::Sample {
                    sample: global as u64,
                    tensor: self.ds.schema().map(|s| s.tensors[f.pos].name.clone()).unwrap_or_default(),
                    why,
                };
                let cached = if k == 0 { lr_cached } else { decoded(k, f) };
                let view = shard.tensor_at(i, f.pos)?;
                let bytes: &[u8] = if k == 0 {
                    lr_bytes
                } else if let Some(b) = cached {
                    b
                } else if let Some(b) = view.raw()? {
                    b
                } else if let Some(rb) = f.base {
                    if up_scale != Some(rb.s) {
                        if lr_bytes.len() != 3 * rb.h * rb.w {
                            return Err(sample_err(format!("residual base lr is {} bytes, not 3x{}x{}", lr_bytes.len(), rb.h, rb.w)));
                        }
                        sc.up.resize(lr_bytes.len() * rb.s * rb.s, 0);
                        bicubic_u8_into(lr_bytes, rb.h, rb.w, rb.s, &mut sc.up);
                        up_scale = Some(rb.s);
                    }
                    sc.tensor.resize(view.raw_len(), 0);
                    view.decode_into_upscaled(&sc.up, &mut sc.tensor)?;
                    &sc.tensor
                } else {
                    sc.tensor.resize(view.raw_len(), 0);
                    view.decode_into(&mut sc.tensor)?;
                    &sc.tensor
                };
                if cached.is_none() && f.coded {
                    if let Some(dc) = self.decoded.as_deref() {
                        dc.offer(global, k, bytes);
                    }
                }
                let side = c * f.num / f.den;
                let per = f.shape[0] * side * side;
                let es = f.out.elt_size_in_bytes();
                // SAFETY: `t` was just allocated by f_empty as a contiguous CPU tensor of bs*per elements of
                // `f.out`, is not shared with any other thread yet, and `bi < bs`.
                let out: &mut [u8] = unsafe { std::slice::from_raw_parts_mut((t.data_ptr() as *mut u8).add(bi * per * es), per * es) };
                let (fy0, fx0) = (y0 * f.num / f.den, x0 * f.num / f.den);
                let crop = (fy0, fx0, side);
                let tscratch = &mut sc.transpose;
                let done = match f.out {
                    Kind::Float => {
                        // SAFETY: libtorch allocations are at least 64-byte aligned, so the f32 view is aligned.
                        let out: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, per) };
                        transform_f32(bytes, f.dtype, f.shape, f.norm, crop, d, out, tscratch)
                    }
                    _ if es == 1 => transform_copy::<1>(bytes, f.shape, crop, d, out, tscratch),
                    _ => transform_copy::<2>(bytes, f.shape, crop, d, out, tscratch),
                };
                done.map_err(sample_err)?;
            }
        }
        let batch = Batch { lr, hr, sr, feat, indices, aug: augs };
        match self.cfg.pin_device {
            Some(dev) if dev.is_cuda() => batch.try_map(|t| t.f_pin_memory(dev).ctx("pin batch")),
            _ => Ok(batch),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::dihedral::transform_copy;
    use half::f16;
    use srcache_formats::{DatasetOptions, DatasetWriter, SampleMeta, Schema, TensorSpec};

    /// A default-storage cache as `srcache cache` writes it (zstd lr/hr, u8 residual sr for two experts,
    /// 8-bit and byte-shuffled f16 features), through the real encoders.
    fn dataset(dir: &std::path::Path) -> Arc<Dataset> {
        let (p, s) = (8usize, 4usize);
        let hp = p * s;
        let mut schema = Schema::new(vec![
            TensorSpec::new("lr", DType::U8, &[3, p, p], Codec::ZSTD),
            TensorSpec::new("hr", DType::U8, &[3, hp, hp], Codec::ZSTD),
            TensorSpec::new("sr/a", DType::U8, &[3, hp, hp], Codec::RESIDUAL_U8),
            TensorSpec::new("feat/a", DType::F16, &[5, p, p], Codec::AFFINE_U8_ZSTD),
            TensorSpec::new("sr/b", DType::U8, &[3, hp, hp], Codec::RESIDUAL_U8),
            TensorSpec::new("feat/b", DType::F16, &[3, p, p], Codec::SHUFFLE_ZSTD),
        ]);
        schema.attrs.insert("scale".into(), s.to_string());
        let (mut w, _) = DatasetWriter::create_or_resume(dir, schema, DatasetOptions { target_shard_bytes: 2_000 }).unwrap();
        for i in 0..6usize {
            let lr: Vec<u8> = (0..3 * p * p).map(|k| ((k * 2654435761 + i * 977) >> 5) as u8 / 2 + (k % p * 12) as u8).collect();
            let hr: Vec<u8> = (0..3 * hp * hp).map(|k| lr[k / (hp * hp) * p * p + k / hp % hp / s * p + k % hp / s]).collect();
            let sr_a: Vec<u8> =
                srcache_formats::residual::bicubic_u8(&lr, p, p, s).iter().enumerate().map(|(k, v)| v.wrapping_add((k % 5) as u8)).collect();
            let feat = |c: usize, g: f32| -> Vec<u8> {
                (0..c * p * p).flat_map(|k| f16::from_f32((k as f32 * 0.37 + i as f32).sin() * g).to_le_bytes()).collect()
            };
            let meta = SampleMeta { id: format!("s{i}"), ..Default::default() };
            w.write(&meta, &[&lr, &hr, &sr_a, &feat(5, 3.0), &hr, &feat(3, 0.01)]).unwrap();
        }
        w.finish().unwrap();
        Arc::new(Dataset::open(dir).unwrap())
    }

    #[test]
    fn batches_hold_the_one_tensor_decode_cropped_and_transformed() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset(tmp.path());
        assert!(ds.shards().len() > 1, "want several shards");
        let mut scratch = Vec::new();
        for (cache_decoded, mib) in [(false, 0), (true, 64), (true, 0)] {
            let cfg = LoaderConfig { batch_size: 2, crop: Some(6), workers: 2, seed: 3, cache_decoded, cache_decoded_mib: mib, ..Default::default() };
            let mut l = Loader::new(ds.clone(), (0..6).collect(), &cfg, LoaderPosition::default()).unwrap();
            assert_eq!(l.experts, vec!["a", "b"]);
            // Three epochs: the first decodes (and fills the decoded cache), the later ones read it.
            for _ in 0..9 {
                let b = l.next_batch().unwrap();
                let named = [("lr", &b.lr), ("hr", &b.hr), ("sr/a", &b.sr[0]), ("sr/b", &b.sr[1]), ("feat/a", &b.feat[0]), ("feat/b", &b.feat[1])];
                for (bi, (&g, aug)) in b.indices.iter().zip(&b.aug).enumerate() {
                    let (shard, i) = ds.sample(g).unwrap();
                    for (name, t) in named {
                        let v = shard.tensor(i, name).unwrap();
                        let whole = v.decode().unwrap();
                        let spec = v.spec();
                        let r = spec.shape[1] / 8;
                        let (crop, side) = ((aug.y0 * r, aug.x0 * r, aug.crop * r), aug.crop * r);
                        let es = spec.dtype.size_of();
                        let mut want = vec![0u8; spec.shape[0] * side * side * es];
                        let shape = [spec.shape[0], spec.shape[1], spec.shape[2]];
                        match es {
                            1 => transform_copy::<1>(&whole, shape, crop, aug.d, &mut want, &mut scratch).unwrap(),
                            _ => transform_copy::<2>(&whole, shape, crop, aug.d, &mut want, &mut scratch).unwrap(),
                        }
                        let mut got = vec![0u8; want.len()];
                        t.get(bi as i64).contiguous().copy_data_u8(&mut got, want.len() / es);
                        assert_eq!(got, want, "cache_decoded {cache_decoded} ({mib} MiB): sample {g} {name} aug {aug:?}");
                    }
                }
            }
        }
    }
}
