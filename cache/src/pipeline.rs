//! The cache pipeline: ingest → batcher → device workers → joiner → compress workers → ordered writer,
//! all on bounded crossbeam channels so decoding, inference, compression and disk I/O overlap.
//!
//! Every sample carries its position in the deterministic ingest stream (`seq`); the writer reassembles by
//! `seq`, so the shards are identical whatever the worker counts — which is what makes resume-by-skipping
//! correct.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use image::RgbImage;
use srcache_formats::{encode_with_base, DatasetWriter, EncodedTensor, SampleMeta, Schema};
use tch::{Device, Tensor};

use crate::device::{guard, DeviceTime, Worker};
use crate::error::{CacheError, Result};
use crate::layout::{Layout, Slot};
use crate::source::{PatchSample, SampleStream};
use crate::Progress;
use srcache_experts::Expert;

/// PSNR recorded for a perfect reconstruction (dB).
pub const PSNR_CAP: f32 = 100.0;

/// One batch of consecutive samples, all with the same LR shape.
pub(crate) struct Batch {
    pub id: u64,
    pub first_seq: u64,
    pub samples: Vec<PatchSample>,
    /// NHWC u8 of all expert inputs (LR patches, with their halo when the run has one), contiguous: what
    /// becomes the input tensor.
    pub lr_nhwc: Vec<u8>,
    /// Side of each expert input in LR pixels (the patch plus twice the halo).
    pub side: u32,
    /// Per sample: where the patch lies inside its expert input (LR pixels; `(halo, halo)` away from borders).
    pub offsets: Vec<(u32, u32)>,
}

/// An expert's input for `s`: the bare LR patch, or with `halo` > 0 the patch and its context from the whole
/// LR image (`srcache_ingest::patch::crop_with_halo`), and the patch's offset inside it.
pub(crate) fn expert_input(s: &PatchSample, halo: u32) -> (std::borrow::Cow<'_, RgbImage>, (u32, u32)) {
    if halo == 0 {
        return (std::borrow::Cow::Borrowed(&s.lr), (0, 0));
    }
    let (img, off) = srcache_ingest::patch::crop_with_halo(&s.lr_image, &s.patch, halo);
    (std::borrow::Cow::Owned(img), off)
}

/// Keeps what belongs to each patch of one expert's outputs over halo windows: sr `[B,3,side·s,side·s]` →
/// `[B,3,p·s,p·s]`, features at their own resolution likewise. A no-op without a halo. Interior patches (all
/// offsets equal) take one narrow for the whole batch; a batch with border patches is cut per sample.
pub(crate) fn crop_centre(layout: &Layout, expert: usize, batch: &Batch, sr: Tensor, feat: Option<Tensor>) -> Result<(Tensor, Option<Tensor>)> {
    if layout.halo == 0 {
        return Ok((sr, feat));
    }
    let name = layout.experts.get(expert).map(|e| e.name.as_str()).unwrap_or("?");
    let ctx = |what: &str| crate::error::torch(format!("expert {name}: {what} of the halo window"));
    let cut = |t: &Tensor, num: usize, den: usize, what: &str| -> Result<Tensor> {
        let place = |v: u32| -> Result<i64> {
            let v = v as usize * num;
            if !v.is_multiple_of(den) {
                return Err(CacheError::Config {
                    what: format!("expert {name}: its {what} are at {num}/{den} of LR resolution and a patch lies at an odd offset in its halo window; use an even halo and patch size, or halo = 0"),
                });
            }
            Ok((v / den) as i64)
        };
        let side = (layout.patch * num / den) as i64;
        let first = batch.offsets.first().copied().unwrap_or((0, 0));
        if batch.offsets.iter().all(|&o| o == first) {
            let (x, y) = (place(first.0)?, place(first.1)?);
            return t.f_narrow(2, y, side).and_then(|t| t.f_narrow(3, x, side)).map_err(ctx(what));
        }
        let mut parts = Vec::with_capacity(batch.offsets.len());
        for (k, &(ox, oy)) in batch.offsets.iter().enumerate() {
            let (x, y) = (place(ox)?, place(oy)?);
            parts.push(t.f_narrow(0, k as i64, 1).and_then(|t| t.f_narrow(2, y, side)).and_then(|t| t.f_narrow(3, x, side)).map_err(ctx(what))?);
        }
        Tensor::f_cat(&parts, 0).map_err(ctx(what))
    };
    let scale = layout.scale as usize;
    let sr = cut(&sr, scale, 1, "sr")?;
    let (num, den) = layout.experts.get(expert).map(|e| e.feat_ratio).unwrap_or((1, 1));
    let feat = feat.map(|f| cut(&f, num, den, "features")).transpose()?;
    Ok((sr, feat))
}

/// Outputs of one expert for one sample, already in storage dtype.
pub(crate) struct ExpertOut {
    pub sr: Vec<u8>,
    pub feat: Option<Vec<u8>>,
    /// u8-rounded sr, HWC: what PSNR is computed on.
    pub sr_u8: RgbImage,
}

pub(crate) struct GroupOut {
    pub batch: Arc<Batch>,
    /// (expert index, per-sample outputs)
    pub outs: Vec<(usize, Vec<ExpertOut>)>,
}

struct SampleWork {
    seq: u64,
    batch: Arc<Batch>,
    index: usize,
    outs: Vec<ExpertOut>, // in expert order
}

pub(crate) struct Encoded {
    pub seq: u64,
    pub meta: SampleMeta,
    pub tensors: Vec<EncodedTensor>,
}

/// Busy time per stage, nanoseconds (summed over that stage's threads).
#[derive(Default)]
pub(crate) struct StageClock {
    pub ingest: AtomicU64,
    pub forward: AtomicU64,
    pub compress: AtomicU64,
    pub write: AtomicU64,
}

pub(crate) fn add(clock: &AtomicU64, since: Instant) {
    clock.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// One device worker: a device and the experts (indices into the run's expert list) it runs.
pub(crate) struct Group {
    pub device: Device,
    pub experts: Vec<usize>,
}

pub(crate) struct Plan<'a> {
    pub layout: &'a Layout,
    pub groups: Vec<Group>,
    /// Whether every batch goes to every group (expert split) or to any one (data parallel).
    pub broadcast: bool,
    pub batch: usize,
    pub fp16: bool,
    pub compress_workers: usize,
    /// Samples at the start of the stream that are recomputed (to keep batch composition identical to an
    /// uninterrupted run) but not written, because complete shards already hold them.
    pub drop_first: u64,
    pub first_seq: u64,
}

pub(crate) struct PipelineStats {
    pub written: u64,
    pub psnr_sum: Vec<f64>,
    pub clock: StageClock,
    /// One per device worker, in group order.
    pub devices: Vec<DeviceTime>,
}

/// Runs the pipeline to the end of `stream`, writing into `writer`. Returns the writer (not finished) so the
/// caller decides whether to finish (only when every stage succeeded).
pub(crate) fn run_pipeline(
    plan: Plan<'_>,
    loaded: Vec<Vec<Expert>>,
    stream: SampleStream,
    mut writer: DatasetWriter,
    progress: &dyn Progress,
) -> Result<(DatasetWriter, PipelineStats)> {
    let n_groups = plan.groups.len();
    let layout = plan.layout;
    let clock = StageClock::default();
    let mut psnr_sum = vec![0.0f64; layout.experts.len()];
    let mut written = 0u64;
    let mut devices = Vec::new();

    let cap = 2 * n_groups.max(1) + 2;
    type Links = (Vec<Sender<Arc<Batch>>>, Vec<Receiver<Arc<Batch>>>);
    let (batch_txs, batch_rxs): Links = if plan.broadcast {
        (0..n_groups).map(|_| bounded(2)).unzip()
    } else {
        let (tx, rx) = bounded(cap);
        (vec![tx], vec![rx; n_groups])
    };
    let (group_tx, group_rx) = bounded::<GroupOut>(cap);
    let (work_tx, work_rx) = bounded::<SampleWork>(plan.batch * 4);
    let (enc_tx, enc_rx) = bounded::<Result<Encoded>>(plan.batch * 4);
    let (err_tx, err_rx) = crossbeam_channel::unbounded::<CacheError>();

    std::thread::scope(|s| {
        // Batcher.
        {
            let err_tx = err_tx.clone();
            let clock = &clock;
            let batch_size = plan.batch;
            let first_seq = plan.first_seq;
            s.spawn(move || {
                if let Err(e) = guard("batcher", || batcher(stream, &batch_txs, batch_size, first_seq, layout, clock)) {
                    let _ = err_tx.send(e);
                }
            });
        }
        // Device workers: each pulls the next batch when it is ready for one (a slower device takes fewer).
        let mut device_threads = Vec::new();
        for (gi, (group, experts)) in plan.groups.iter().zip(loaded).enumerate() {
            let rx = batch_rxs[gi].clone();
            let tx = group_tx.clone();
            let err_tx = err_tx.clone();
            let worker = Worker { layout, experts, index: group.experts.clone(), batch: plan.batch, fp16: plan.fp16, clock: &clock, progress };
            device_threads.push(s.spawn(move || match worker.run(rx, tx) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = err_tx.send(e);
                    None
                }
            }));
        }
        drop(group_tx);
        drop(batch_rxs);
        // Joiner: waits for all groups of a batch (expert split), then fans out per sample.
        {
            let err_tx = err_tx.clone();
            let need = if plan.broadcast { n_groups } else { 1 };
            let n_experts = layout.experts.len();
            s.spawn(move || {
                if let Err(e) = guard("joiner", || joiner(group_rx, work_tx, need, n_experts)) {
                    let _ = err_tx.send(e);
                }
            });
        }
        // Compress workers.
        for _ in 0..plan.compress_workers.max(1) {
            let rx = work_rx.clone();
            let tx = enc_tx.clone();
            let err_tx = err_tx.clone();
            let clock = &clock;
            s.spawn(move || {
                let r = guard("compress", || {
                    for w in rx.iter() {
                        let t0 = Instant::now();
                        let r = compress(layout, w);
                        add(&clock.compress, t0);
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    let _ = err_tx.send(e);
                }
            });
        }
        drop(work_rx);
        drop(enc_tx);

        // Ordered writer (this thread).
        let result = (|| -> Result<()> {
            let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
            let mut next = plan.first_seq;
            let write_from = plan.first_seq + plan.drop_first;
            for r in enc_rx.iter() {
                let enc = r?;
                pending.insert(enc.seq, enc);
                while let Some(enc) = pending.remove(&next) {
                    next += 1;
                    if enc.seq < write_from {
                        continue;
                    }
                    let t0 = Instant::now();
                    let bytes: u64 = enc.tensors.iter().map(|t| t.bytes.len() as u64).sum();
                    for (i, e) in layout.experts.iter().enumerate() {
                        psnr_sum[i] += enc.meta.psnr.get(&e.name).copied().unwrap_or(0.0) as f64;
                    }
                    writer.write_encoded(&enc.meta, enc.tensors)?;
                    add(&clock.write, t0);
                    written += 1;
                    progress.advance(1, bytes);
                }
            }
            if let Some((&seq, _)) = pending.iter().next() {
                return Err(CacheError::Pipeline { what: format!("sample #{next} never arrived (have #{seq})") });
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Dropping the receiver stops the upstream stages.
            drop(enc_rx);
            let _ = err_tx.send(e);
        }
        devices = device_threads.into_iter().filter_map(|h| h.join().ok().flatten()).collect();
    });
    drop(err_tx);
    // The first error is the cause; later ones are mostly "channel closed" consequences of it.
    if let Some(e) = err_rx.try_iter().next() {
        return Err(e);
    }
    Ok((writer, PipelineStats { written, psnr_sum, clock, devices }))
}

fn batcher(stream: SampleStream, txs: &[Sender<Arc<Batch>>], batch_size: usize, first_seq: u64, layout: &Layout, clock: &StageClock) -> Result<()> {
    let mut seq = first_seq;
    let mut id = 0u64;
    let mut cur: Vec<PatchSample> = Vec::with_capacity(batch_size);
    let (lw, lh) = (layout.patch as u32, layout.patch as u32);
    let (hw, hh) = (lw * layout.scale, lh * layout.scale);
    let halo = layout.halo as u32;
    let flush = |cur: &mut Vec<PatchSample>, id: &mut u64, seq: u64| -> bool {
        if cur.is_empty() {
            return true;
        }
        let samples = std::mem::take(cur);
        let first = seq - samples.len() as u64;
        let side = lw + 2 * halo;
        let mut lr_nhwc = Vec::with_capacity(samples.len() * (side * side * 3) as usize);
        let mut offsets = Vec::with_capacity(samples.len());
        for s in &samples {
            let (input, off) = expert_input(s, halo);
            lr_nhwc.extend_from_slice(input.as_raw());
            offsets.push(off);
        }
        let b = Arc::new(Batch { id: *id, first_seq: first, samples, lr_nhwc, side, offsets });
        *id += 1;
        txs.iter().all(|tx| tx.send(b.clone()).is_ok())
    };
    let mut t0 = Instant::now();
    for item in stream {
        let sample = item?;
        if sample.lr.dimensions() != (lw, lh) || sample.hr.dimensions() != (hw, hh) {
            return Err(CacheError::Sample {
                sample: sample.id.clone(),
                what: format!("lr {:?} / hr {:?}, the schema needs lr {lw}x{lh} and hr {hw}x{hh}", sample.lr.dimensions(), sample.hr.dimensions()),
            });
        }
        cur.push(sample);
        seq += 1;
        if cur.len() == batch_size {
            add(&clock.ingest, t0);
            if !flush(&mut cur, &mut id, seq) {
                return Ok(());
            }
            t0 = Instant::now();
        }
    }
    add(&clock.ingest, t0);
    flush(&mut cur, &mut id, seq);
    Ok(())
}

fn joiner(rx: Receiver<GroupOut>, tx: Sender<SampleWork>, need: usize, n_experts: usize) -> Result<()> {
    // batch id -> (groups arrived, outputs by expert index)
    type Partial = (usize, Vec<(usize, Vec<ExpertOut>)>);
    let mut partial: HashMap<u64, Partial> = HashMap::new();
    for g in rx.iter() {
        let id = g.batch.id;
        let entry = partial.entry(id).or_insert_with(|| (0, Vec::new()));
        entry.0 += 1;
        entry.1.extend(g.outs);
        if entry.0 < need {
            continue;
        }
        let Some((_, mut outs)) = partial.remove(&id) else { continue };
        outs.sort_by_key(|(i, _)| *i);
        if outs.len() != n_experts {
            return Err(CacheError::Pipeline { what: format!("batch {id}: {} of {n_experts} experts", outs.len()) });
        }
        let n = g.batch.samples.len();
        let mut per_sample: Vec<Vec<ExpertOut>> = (0..n).map(|_| Vec::with_capacity(n_experts)).collect();
        for (_, v) in outs {
            for (k, o) in v.into_iter().enumerate() {
                if let Some(slot) = per_sample.get_mut(k) {
                    slot.push(o);
                }
            }
        }
        for (k, outs) in per_sample.into_iter().enumerate() {
            let w = SampleWork { seq: g.batch.first_seq + k as u64, batch: g.batch.clone(), index: k, outs };
            if tx.send(w).is_err() {
                return Ok(());
            }
        }
    }
    if !partial.is_empty() {
        return Err(CacheError::Pipeline { what: format!("{} batches incomplete at end of stream", partial.len()) });
    }
    Ok(())
}

fn compress(layout: &Layout, w: SampleWork) -> Result<Encoded> {
    let s = &w.batch.samples[w.index];
    let mut psnr = BTreeMap::new();
    for (e, o) in layout.experts.iter().zip(&w.outs) {
        let v = srcache_ingest::metrics::psnr_y(&o.sr_u8, &s.hr, layout.scale);
        // Identical images (flat patches) give +inf, which JSON metadata cannot carry.
        psnr.insert(e.name.clone(), if v.is_finite() { v as f32 } else { PSNR_CAP });
    }
    let meta = SampleMeta { id: s.id.clone(), source: s.source.clone(), patch: s.patch, variant: s.variant.clone(), psnr };
    let schema: &Schema = &layout.schema;
    let lr = srcache_ingest::shards::to_chw(&s.lr);
    let hr = srcache_ingest::shards::to_chw(&s.hr);
    let mut tensors = Vec::with_capacity(schema.tensors.len());
    for spec in &schema.tensors {
        let raw: &[u8] = match layout.slot(&spec.name) {
            Some(Slot::Lr) => &lr,
            Some(Slot::Hr) => &hr,
            Some(Slot::Sr(i)) => &w.outs[i].sr,
            Some(Slot::Feat(i)) => w.outs[i].feat.as_deref().unwrap_or_default(),
            None => return Err(CacheError::Pipeline { what: format!("no producer for tensor {}", spec.name) }),
        };
        // `residual_u8` sr is stored against the bicubic of this sample's lr, so every encoder gets the lr bytes.
        let enc = encode_with_base(spec, raw, Some(&lr)).map_err(|source| CacheError::Encode { sample: s.id.clone(), source: Box::new(source) })?;
        tensors.push(enc);
    }
    Ok(Encoded { seq: w.seq, meta, tensors })
}

pub(crate) fn secs(ns: &AtomicU64) -> f64 {
    Duration::from_nanos(ns.load(Ordering::Relaxed)).as_secs_f64()
}
