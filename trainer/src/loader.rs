//! Streams training batches out of a memory-mapped [`Dataset`].
//!
//! Determinism: the sample order of an epoch comes from `(seed, epoch)`, each sample's crop box and dihedral
//! transform from `(seed, epoch, slot in the epoch)`. Worker `w` builds global batches `w, w+W, w+2W, ...` into
//! its own bounded channel and the consumer reads the channels round-robin, so the stream is identical for any
//! worker count and a [`LoaderPosition`] is all a checkpoint needs to resume mid-epoch.

use crate::config::{LoaderConfig, ShuffleMode};
use crate::error::{Result, TorchCtx, TrainerError};
use crossbeam_channel::{bounded, Receiver, Sender};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use srcache_formats::{DType, Dataset};
use half::slice::HalfBitsSliceExt;
use std::sync::Arc;
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
}

impl Batch {
    /// The batch on `device` as f32 (u8 tensors scaled by 1/255), ready for the model.
    pub fn to_device(&self, device: Device) -> Result<Batch> {
        let mv = |t: &Tensor| -> Result<Tensor> {
            let t = if device == Device::Cpu {
                t.shallow_clone()
            } else {
                // Pinned host memory lets the copy overlap with compute; the copy moves the stored dtype.
                t.f_pin_memory(device)?.f_to_device_(device, t.kind(), true, false).ctx("batch to device")?
            };
            match t.kind() {
                Kind::Float => Ok(t),
                Kind::Uint8 => t.f_to_kind(Kind::Float)?.f_mul_scalar(1.0 / 255.0).ctx("u8 to f32"),
                _ => t.f_to_kind(Kind::Float).ctx("to f32"),
            }
        };
        Ok(Batch {
            lr: mv(&self.lr)?,
            hr: mv(&self.hr)?,
            sr: self.sr.iter().map(mv).collect::<Result<_>>()?,
            feat: self.feat.iter().map(mv).collect::<Result<_>>()?,
            indices: self.indices.clone(),
        })
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
    pub experts: Vec<String>,
    pub feat_channels: Vec<usize>,
}

impl Loader {
    /// Names of the experts in a dataset (every `sr/<name>`), sorted.
    pub fn dataset_experts(ds: &Dataset) -> Vec<String> {
        let mut v: Vec<String> = ds
            .schema()
            .map(|s| s.tensors.iter().filter_map(|t| t.name.strip_prefix("sr/").map(str::to_string)).collect())
            .unwrap_or_default();
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
            Ok(Field { pos, dtype: spec.dtype, shape: [spec.shape[0], spec.shape[1], spec.shape[2]], num: spec.shape[1], den: h.max(1), norm, out })
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
        if crop == 0 || crop > h.min(w) || crop % align != 0 {
            return Err(bad(format!("crop {crop} must be in 1..={} and a multiple of {align}", h.min(w))));
        }
        let plan = Arc::new(Plan { lr, hr, sr, feat, h, w, crop, align });
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
            experts,
            feat_channels,
        };
        l.spawn(start);
        Ok(l)
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.indices.len() / self.cfg.batch_size) as u64
    }

    pub fn position(&self) -> LoaderPosition {
        self.pos
    }

    fn spawn(&mut self, start: LoaderPosition) {
        self.stop();
        let bpe = self.batches_per_epoch();
        let g0 = start.epoch * bpe + start.batch.min(bpe);
        let workers = self.cfg.workers.max(1);
        for w in 0..workers {
            let (tx, rx) = bounded(self.cfg.prefetch.max(1));
            let job = Job { ds: self.ds.clone(), plan: self.plan.clone(), cfg: self.cfg.clone(), indices: self.indices.clone(), bpe };
            let first = g0 + w as u64;
            let step = workers as u64;
            self.threads.push(std::thread::spawn(move || job.run(first, step, tx)));
            self.rx.push(rx);
        }
        self.start_global = g0;
        self.next_global = g0;
        self.pos = start;
    }

    fn stop(&mut self) {
        self.rx.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Restarts the stream at `pos` (used on resume).
    pub fn seek(&mut self, pos: LoaderPosition) {
        self.spawn(pos);
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
            groups.into_iter().flat_map(|mut g| {
                g.shuffle(&mut rng);
                g
            }).collect()
        }
    }
}

impl Job {
    fn run(self, first: u64, step: u64, tx: Sender<Result<Batch>>) {
        let mut order: (u64, Vec<usize>) = (u64::MAX, Vec::new());
        let mut scratch = Vec::new();
        let mut fscratch = Vec::new();
        let mut tscratch = Vec::new();
        let mut g = first;
        loop {
            let epoch = g / self.bpe;
            let b = (g % self.bpe) as usize;
            if order.0 != epoch {
                order = (epoch, epoch_order(&self.ds, &self.indices, self.cfg.shuffle, self.cfg.seed, epoch));
            }
            let bs = self.cfg.batch_size;
            let slots = (b * bs..(b + 1) * bs).collect::<Vec<_>>();
            let res = self.build(epoch, &slots, &order.1, &mut scratch, &mut fscratch, &mut tscratch);
            let failed = res.is_err();
            if tx.send(res).is_err() || failed {
                return;
            }
            g += step;
        }
    }

    fn build(&self, epoch: u64, slots: &[usize], order: &[usize], scratch: &mut Vec<u8>, fscratch: &mut Vec<f32>, tscratch: &mut Vec<u8>) -> Result<Batch> {
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
            let (shard, i) = self.ds.sample(global)?;
            for (f, t) in [(&p.lr, &lr), (&p.hr, &hr)].into_iter().chain(p.sr.iter().zip(&sr)).chain(p.feat.iter().zip(&feat)) {
                let view = shard.tensor_at(i, f.pos)?;
                let bytes: &[u8] = match view.raw()? {
                    Some(b) => b,
                    None => {
                        scratch.resize(view.raw_len(), 0);
                        view.decode_into(scratch)?;
                        scratch
                    }
                };
                let side = c * f.num / f.den;
                let per = f.shape[0] * side * side;
                let es = f.out.elt_size_in_bytes();
                // SAFETY: `t` was just allocated by f_empty as a contiguous CPU tensor of bs*per elements of
                // `f.out`, is not shared with any other thread yet, and `bi < bs`.
                let out: &mut [u8] = unsafe { std::slice::from_raw_parts_mut((t.data_ptr() as *mut u8).add(bi * per * es), per * es) };
                let (fy0, fx0) = (y0 * f.num / f.den, x0 * f.num / f.den);
                let crop = (fy0, fx0, side);
                let done = match f.out {
                    Kind::Float => {
                        // SAFETY: libtorch allocations are at least 64-byte aligned, so the f32 view is aligned.
                        let out: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, per) };
                        transform(bytes, f, crop, d, out, fscratch)
                    }
                    _ if es == 1 => transform_copy::<1>(bytes, f.shape, crop, d, out, tscratch),
                    _ => transform_copy::<2>(bytes, f.shape, crop, d, out, tscratch),
                };
                done.map_err(|why| TrainerError::Sample { sample: global as u64, tensor: self.ds.schema().map(|s| s.tensors[f.pos].name.clone()).unwrap_or_default(), why })?;
            }
        }
        Ok(Batch { lr, hr, sr, feat, indices })
    }
}

/// Crops `side`×`side` at (y0, x0) from a CHW tensor of `N`-byte elements and applies dihedral `d` (see
/// [`transform`]) without changing the dtype: rows are plain copies (reversed for a horizontal flip), a transpose
/// gathers in 16×16 blocks so both sides stay in cache.
fn transform_copy<const N: usize>(bytes: &[u8], [ch, h, w]: [usize; 3], (y0, x0, side): (usize, usize, usize), d: u8, out: &mut [u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    let (src, rest) = bytes.as_chunks::<N>();
    let (dst, _) = out.as_chunks_mut::<N>();
    if !rest.is_empty() || src.len() != ch * h * w || dst.len() != ch * side * side {
        return Err(format!("{} bytes for shape {:?} of {N}-byte elements", bytes.len(), [ch, h, w]));
    }
    if y0 + side > h || x0 + side > w {
        return Err(format!("crop {side} at ({y0},{x0}) outside {h}x{w}"));
    }
    let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
    let n = side * side;
    for c in 0..ch {
        let plane = &src[c * h * w..(c + 1) * h * w];
        let o = &mut dst[c * n..(c + 1) * n];
        if !t {
            for i in 0..side {
                let r = if fv { side - 1 - i } else { i };
                let row = &mut o[i * side..(i + 1) * side];
                let s0 = (y0 + r) * w + x0;
                row.copy_from_slice(&plane[s0..s0 + side]);
                if fh {
                    row.reverse();
                }
            }
        } else if N == 2 && side % 8 == 0 {
            // Transpose the crop with 8×8 SIMD blocks into `scratch` (T(i, j) = crop(j, i)), then output row i is
            // row a(i) of T, reversed for a horizontal flip: two streaming passes instead of a 2-byte gather.
            scratch.resize(n * N, 0);
            let (tr, _) = scratch.as_chunks_mut::<N>();
            // SAFETY: N == 2, so both slices hold 2-byte elements, and [u8; 2] has alignment 1 like u16 loads
            // done unaligned; all 8×8 blocks lie inside the crop and `tr` (side % 8 == 0, bounds checked above).
            unsafe { transpose_crop_u16(plane.as_ptr() as *const u8, w, (y0, x0, side), tr.as_mut_ptr() as *mut u8) };
            for i in 0..side {
                let a = if fv { side - 1 - i } else { i };
                let row = &mut o[i * side..(i + 1) * side];
                row.copy_from_slice(&tr[a * side..(a + 1) * side]);
                if fh {
                    row.reverse();
                }
            }
        } else {
            // Output (i, j) = crop(y = b, x = a), a/b the flip-adjusted i/j.
            const B: usize = 16;
            for bi in (0..side).step_by(B) {
                for bj in (0..side).step_by(B) {
                    for i in bi..(bi + B).min(side) {
                        let a = if fv { side - 1 - i } else { i };
                        for j in bj..(bj + B).min(side) {
                            let b = if fh { side - 1 - j } else { j };
                            o[i * side + j] = plane[(y0 + b) * w + x0 + a];
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes the transpose of the `side`×`side` crop at (y0, x0) of a row-major plane of 2-byte elements (row
/// length `w`) to `dst` (row-major, `side`×`side`), in 8×8 blocks of SSE2 unpacks (baseline x86-64).
///
/// # Safety
/// `side % 8 == 0`, the crop lies inside the plane and `dst` holds `side * side` 2-byte elements.
unsafe fn transpose_crop_u16(src: *const u8, w: usize, (y0, x0, side): (usize, usize, usize), dst: *mut u8) {
    for by in (0..side).step_by(8) {
        for bx in (0..side).step_by(8) {
            // SAFETY: the block lies inside the crop and `dst` (caller's contract).
            unsafe {
                let s = src.add(((y0 + by) * w + x0 + bx) * 2);
                let d = dst.add((bx * side + by) * 2);
                transpose8x8_u16(s, w * 2, d, side * 2);
            }
        }
    }
}

/// # Safety
/// 8 rows of 16 bytes readable at `src + k * src_stride` and writable at `dst + k * dst_stride`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8x8_u16(src: *const u8, src_stride: usize, dst: *mut u8, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: reads and writes stay in the 8 rows the caller vouches for; SSE2 is baseline on x86-64.
    unsafe {
        let r = |k: usize| _mm_loadu_si128(src.add(k * src_stride) as *const __m128i);
        let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
        let (a0, a1) = (_mm_unpacklo_epi16(r0, r1), _mm_unpackhi_epi16(r0, r1));
        let (a2, a3) = (_mm_unpacklo_epi16(r2, r3), _mm_unpackhi_epi16(r2, r3));
        let (a4, a5) = (_mm_unpacklo_epi16(r4, r5), _mm_unpackhi_epi16(r4, r5));
        let (a6, a7) = (_mm_unpacklo_epi16(r6, r7), _mm_unpackhi_epi16(r6, r7));
        let (b0, b1) = (_mm_unpacklo_epi32(a0, a2), _mm_unpackhi_epi32(a0, a2));
        let (b2, b3) = (_mm_unpacklo_epi32(a1, a3), _mm_unpackhi_epi32(a1, a3));
        let (b4, b5) = (_mm_unpacklo_epi32(a4, a6), _mm_unpackhi_epi32(a4, a6));
        let (b6, b7) = (_mm_unpacklo_epi32(a5, a7), _mm_unpackhi_epi32(a5, a7));
        let cols = [
            _mm_unpacklo_epi64(b0, b4),
            _mm_unpackhi_epi64(b0, b4),
            _mm_unpacklo_epi64(b1, b5),
            _mm_unpackhi_epi64(b1, b5),
            _mm_unpacklo_epi64(b2, b6),
            _mm_unpackhi_epi64(b2, b6),
            _mm_unpacklo_epi64(b3, b7),
            _mm_unpackhi_epi64(b3, b7),
        ];
        for (k, c) in cols.into_iter().enumerate() {
            _mm_storeu_si128(dst.add(k * dst_stride) as *mut __m128i, c);
        }
    }
}

/// # Safety
/// As the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose8x8_u16(src: *const u8, src_stride: usize, dst: *mut u8, dst_stride: usize) {
    for i in 0..8 {
        for j in 0..8 {
            // SAFETY: inside the 8 rows the caller vouches for.
            unsafe { std::ptr::copy_nonoverlapping(src.add(i * src_stride + j * 2), dst.add(j * dst_stride + i * 2), 2) };
        }
    }
}

/// Crops `side`×`side` at (y0, x0) from a CHW tensor stored as little-endian `f.dtype`, applies dihedral `d`
/// (bit 2: transpose, bit 1: vertical flip, bit 0: horizontal flip) and writes f32 into `out`.
fn transform(bytes: &[u8], f: &Field, (y0, x0, side): (usize, usize, usize), d: u8, out: &mut [f32], fscratch: &mut Vec<f32>) -> Result<(), String> {
    let [ch, h, w] = f.shape;
    let es = f.dtype.size_of();
    if bytes.len() != ch * h * w * es {
        return Err(format!("{} bytes for shape {:?} {:?}", bytes.len(), f.shape, f.dtype));
    }
    if y0 + side > h || x0 + side > w {
        return Err(format!("crop {side} at ({y0},{x0}) outside {h}x{w}"));
    }
    if f.dtype == DType::F16 && cfg!(target_endian = "little") {
        // SAFETY: u16 has no invalid bit patterns; align_to only yields a middle slice that is aligned.
        let (pre, mid, _) = unsafe { bytes.align_to::<u16>() };
        if pre.is_empty() && mid.len() == ch * h * w {
            transform_f16(mid.reinterpret_cast(), f.shape, (y0, x0, side), d, out, fscratch);
            return Ok(());
        }
    }
    let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
    let s = side as isize;
    let (a0, ai) = if fv { (s - 1, -1) } else { (0, 1) };
    let (b0, bj) = if fh { (s - 1, -1) } else { (0, 1) };
    let wi = w as isize;
    // Source offset of output (i, j) is base + i*si + j*sj.
    let (base, si, sj) = if t {
        ((y0 as isize + b0) * wi + x0 as isize + a0, ai, bj * wi)
    } else {
        ((y0 as isize + a0) * wi + x0 as isize + b0, ai * wi, bj)
    };
    let norm = f.norm;
    for c in 0..ch {
        let plane = (c * h * w) as isize;
        let o = &mut out[c * side * side..(c + 1) * side * side];
        for i in 0..side {
            let row = &mut o[i * side..(i + 1) * side];
            let mut p = plane + base + i as isize * si;
            match f.dtype {
                DType::U8 => {
                    for v in row.iter_mut() {
                        *v = bytes[p as usize] as f32 * norm;
                        p += sj;
                    }
                }
                DType::F16 => {
                    for v in row.iter_mut() {
                        let k = 2 * p as usize;
                        *v = half::f16::from_bits(u16::from_le_bytes([bytes[k], bytes[k + 1]])).to_f32();
                        p += sj;
                    }
                }
                DType::BF16 => {
                    for v in row.iter_mut() {
                        let k = 2 * p as usize;
                        *v = half::bf16::from_bits(u16::from_le_bytes([bytes[k], bytes[k + 1]])).to_f32();
                        p += sj;
                    }
                }
                DType::F32 => {
                    for v in row.iter_mut() {
                        let k = 4 * p as usize;
                        *v = f32::from_le_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
                        p += sj;
                    }
                }
                DType::U16 => {
                    for v in row.iter_mut() {
                        let k = 2 * p as usize;
                        *v = u16::from_le_bytes([bytes[k], bytes[k + 1]]) as f32;
                        p += sj;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Fast path for f16 (the bulk of a sample): whole rows go through half's SIMD (F16C) slice conversion; a
/// transposing transform converts the crop into a scratch plane first, then gathers from it (L2-resident).
fn transform_f16(src: &[half::f16], [ch, h, w]: [usize; 3], (y0, x0, side): (usize, usize, usize), d: u8, out: &mut [f32], scratch: &mut Vec<f32>) {
    use half::slice::HalfFloatSliceExt;
    let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
    let n = side * side;
    for c in 0..ch {
        let plane = &src[c * h * w..(c + 1) * h * w];
        let o = &mut out[c * n..(c + 1) * n];
        if !t {
            for i in 0..side {
                let r = if fv { side - 1 - i } else { i };
                let row = &mut o[i * side..(i + 1) * side];
                let s0 = (y0 + r) * w + x0;
                plane[s0..s0 + side].convert_to_f32_slice(row);
                if fh {
                    row.reverse();
                }
            }
        } else {
            scratch.resize(n, 0.0);
            for r in 0..side {
                let s0 = (y0 + r) * w + x0;
                plane[s0..s0 + side].convert_to_f32_slice(&mut scratch[r * side..(r + 1) * side]);
            }
            // Output (i, j) = crop(y = b, x = a) with a, b the flip-adjusted i, j (see `transform`).
            for i in 0..side {
                let a = if fv { side - 1 - i } else { i };
                let row = &mut o[i * side..(i + 1) * side];
                for (j, v) in row.iter_mut().enumerate() {
                    let b = if fh { side - 1 - j } else { j };
                    *v = scratch[b * side + a];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dtype-preserving path (SIMD 8×8 transposes when the side allows) against the f32 path, which
    /// converts f16 row by row and gathers transposes from a scratch plane: every dihedral, sides with and
    /// without the SIMD path, an odd crop offset.
    #[test]
    fn stored_dtype_transform_matches_f32_transform() -> Result<(), String> {
        let (ch, h, w) = (3usize, 41usize, 37usize);
        let vals: Vec<half::f16> = (0..ch * h * w).map(|k| half::f16::from_f32((k % 977) as f32 * 0.25)).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = Field { pos: 0, dtype: DType::F16, shape: [ch, h, w], num: 1, den: 1, norm: 1.0, out: Kind::Half };
        let (mut fs, mut ts) = (Vec::new(), Vec::new());
        for side in [8usize, 16, 24, 13] {
            for d in 0..8u8 {
                let crop = (5, 7, side);
                let mut want = vec![0f32; ch * side * side];
                transform(&bytes, &f, crop, d, &mut want, &mut fs)?;
                let mut got = vec![0u8; ch * side * side * 2];
                transform_copy::<2>(&bytes, f.shape, crop, d, &mut got, &mut ts)?;
                let got: Vec<f32> = got.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                assert_eq!(got, want, "side {side} dihedral {d}");
            }
        }
        Ok(())
    }
}
