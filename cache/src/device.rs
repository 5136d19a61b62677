//! One device's worker in the cache pipeline: three threads so the device never waits for the host.
//!
//! - upload: builds batch n+1's input (u8 NHWC → pinned host memory → non-blocking copy → f32 NCHW on the device)
//!   while batch n runs;
//! - compute: the experts' forward passes (chunked, with out-of-memory back-off) and the casts to storage dtypes,
//!   all enqueued on the device; its time waiting for input is the device's idle time;
//! - download: copies batch n−1's outputs back to the host (the only blocking copies) and splits them per sample.
//!
//! tch has no CUDA stream API, so on one GPU the copies and kernels share the default stream: the overlap is on
//! the host side (no host work ever stands between two batches' kernels), which is what keeps the GPU fed. On
//! the CPU the same three stages run one after another per batch and give the same bytes as a single thread.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use srcache_experts::Expert;
use tch::{Device, Kind, Tensor};

use crate::error::{torch, CacheError, Result};
use crate::layout::{ExpertLayout, Layout};
use crate::pipeline::{add, Batch, ExpertOut, GroupOut, StageClock};
use crate::Progress;

/// Busy and idle time of one device worker over a run (the run summary lists one per worker).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTime {
    pub device: String,
    pub experts: Vec<String>,
    pub batches: u64,
    pub samples: u64,
    /// Wall time of the compute stage from its first input to its last output.
    pub wall_s: f64,
    /// Of that, time the compute stage waited for an uploaded batch: the device had nothing queued.
    pub idle_s: f64,
    /// The batch each expert ended up running at (halved on out-of-memory).
    pub final_chunk: usize,
}

impl DeviceTime {
    pub fn idle_share(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.idle_s / self.wall_s
        } else {
            0.0
        }
    }
}

/// A batch's input on the device.
struct Uploaded {
    batch: Arc<Batch>,
    x: Tensor,
}

/// One expert's outputs for a batch, still on the device, already in their storage dtypes.
struct OnDevice {
    expert: usize,
    sr: Tensor,
    /// u8 HWC, what PSNR is computed on.
    sr_u8: Tensor,
    feat: Option<Tensor>,
    /// bool [B]: the sample's raw outputs were all finite (checked on the host, per sample, before storing).
    finite: Tensor,
}

struct Computed {
    batch: Arc<Batch>,
    outs: Vec<OnDevice>,
}

/// Everything one device worker needs.
pub(crate) struct Worker<'a> {
    pub layout: &'a Layout,
    pub experts: Vec<Expert>,
    /// The run's expert index of each of `experts`.
    pub index: Vec<usize>,
    pub batch: usize,
    pub fp16: bool,
    pub clock: &'a StageClock,
    pub progress: &'a dyn Progress,
}

impl Worker<'_> {
    fn device(&self) -> Device {
        self.experts.first().map(|e| e.device()).unwrap_or(Device::Cpu)
    }

    /// Runs the three stages until `rx` is exhausted (or the consumer stops); returns the device's times.
    pub(crate) fn run(self, rx: Receiver<Arc<Batch>>, tx: Sender<GroupOut>) -> Result<DeviceTime> {
        let device = self.device();
        if device.is_cuda() {
            // Heuristic (deterministic) cuDNN algorithm choice: two runs of the same batches give the same bytes.
            tch::Cuda::cudnn_set_benchmark(false);
        }
        let (up_tx, up_rx) = bounded::<Uploaded>(2);
        let (down_tx, down_rx) = bounded::<Computed>(2);
        let names: Vec<String> = self.experts.iter().map(|e| e.name().to_string()).collect();
        std::thread::scope(|s| {
            let upload = s.spawn(move || guard("upload", || upload(device, rx, up_tx)));
            let download = s.spawn(move || guard("download", || download(&names, down_rx, tx)));
            let compute = guard("compute", || self.compute(up_rx, down_tx));
            let up = upload.join().unwrap_or_else(|_| Err(CacheError::Pipeline { what: "upload thread panicked".into() }));
            let down = download.join().unwrap_or_else(|_| Err(CacheError::Pipeline { what: "download thread panicked".into() }));
            // The first failure is the cause: a stage that fails closes its channels and the others stop.
            let time = compute?;
            up?;
            down?;
            Ok(time)
        })
    }

    fn compute(&self, rx: Receiver<Uploaded>, tx: Sender<Computed>) -> Result<DeviceTime> {
        let _guard = tch::no_grad_guard();
        let device = self.device();
        let mut chunk = self.batch.max(1);
        let mut warm: Vec<Vec<i64>> = Vec::new();
        let mut time = DeviceTime {
            device: srcache_experts::device_name(device),
            experts: self.experts.iter().map(|e| e.name().to_string()).collect(),
            ..Default::default()
        };
        let mut started: Option<Instant> = None;
        let idle = AtomicU64::new(0);
        // Feature projections onto the experts' PCA bases, as 1×1 convolutions on this device.
        let mut proj = Vec::with_capacity(self.index.len());
        for &i in &self.index {
            proj.push(
                self.layout.experts[i].pca.as_ref().map(|b| srcache_experts::pca::projection(b, device).map_err(CacheError::from)).transpose()?,
            );
        }
        loop {
            let t_wait = Instant::now();
            let Ok(up) = rx.recv() else { break };
            if started.is_some() {
                add(&idle, t_wait);
            }
            let t0 = Instant::now();
            started.get_or_insert(t0);
            let n = up.x.size()[0];
            let mut outs = Vec::with_capacity(self.experts.len());
            for ((e, &i), proj) in self.experts.iter().zip(&self.index).zip(&proj) {
                // cuDNN picks kernels per shape on first use: keep that out of the steady state.
                let shape = vec![i as i64, n, up.x.size()[2], up.x.size()[3]];
                if device.is_cuda() && !warm.contains(&shape) {
                    let _warm = forward_chunked(e, &up.x, &mut chunk, self.fp16, self.progress)?;
                    warm.push(shape);
                }
                let (sr, feat, finite) = forward_chunked(e, &up.x, &mut chunk, self.fp16, self.progress)?;
                let (sr, feat) = crate::pipeline::crop_centre(self.layout, i, &up.batch, sr, feat)?;
                let feat = match (feat, proj) {
                    (Some(f), Some((w, b))) => Some(f.f_conv2d(w, Some(b), [1, 1], [0, 0], [1, 1], 1).map_err(torch("PCA projection of features"))?),
                    (f, _) => f,
                };
                outs.push(to_storage(e, &self.layout.experts[i], i, &sr, feat.as_ref(), finite)?);
            }
            add(&self.clock.forward, t0);
            time.batches += 1;
            time.samples += n as u64;
            if tx.send(Computed { batch: up.batch, outs }).is_err() {
                break;
            }
        }
        time.wall_s = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
        time.idle_s = crate::pipeline::secs(&idle);
        time.final_chunk = chunk;
        Ok(time)
    }
}

/// Runs a stage body, turning a panic into an error so one failing thread ends the run instead of hanging it.
pub(crate) fn guard<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(CacheError::Pipeline { what: format!("{stage} stage panicked: {msg}") })
    })
}

fn upload(device: Device, rx: Receiver<Arc<Batch>>, tx: Sender<Uploaded>) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for batch in rx.iter() {
        if batch.samples.is_empty() {
            continue;
        }
        // The expert input's side: the patch, plus its halo when the run has one.
        let (w, h) = (batch.side, batch.side);
        let n = batch.samples.len() as i64;
        let host = Tensor::f_from_slice(&batch.lr_nhwc).and_then(|t| t.f_reshape([n, h as i64, w as i64, 3])).map_err(torch("build input batch"))?;
        let on_device = if device.is_cuda() {
            // Pinned host memory makes the copy a DMA that returns at once; the caching host allocator keeps the
            // pinned block alive until the copy has run.
            let pinned = host.f_pin_memory(device).map_err(torch("pin input batch"))?;
            pinned.f_to_device_(device, Kind::Uint8, true, false).map_err(torch("copy input batch to the device"))?
        } else {
            host
        };
        let x = on_device
            .f_permute([0, 3, 1, 2])
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_div_scalar(255.0))
            .and_then(|t| t.f_contiguous())
            .map_err(torch("build input batch"))?;
        if tx.send(Uploaded { batch, x }).is_err() {
            break;
        }
    }
    Ok(())
}

/// Forward in chunks of `chunk` samples; on out-of-memory halves the chunk (for good) and retries, saying so.
/// Returns sr, feat and the per-sample finiteness mask of [`Expert::forward_masked`] (left on the device: the
/// download stage reads it with the outputs, so checking costs no extra sync).
pub(crate) fn forward_chunked(
    e: &Expert,
    x: &Tensor,
    chunk: &mut usize,
    fp16: bool,
    progress: &dyn Progress,
) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let n = x.size()[0] as usize;
    let autocast = fp16 && e.device().is_cuda();
    loop {
        let mut srs = Vec::new();
        let mut feats = Vec::new();
        let mut masks = Vec::new();
        let mut start = 0;
        let mut oom = false;
        while start < n {
            let len = (*chunk).min(n - start);
            let part = x.f_narrow(0, start as i64, len as i64).map_err(torch("split batch"))?;
            match tch::autocast(autocast, || e.forward_masked(&part)) {
                Ok((sr, feat, finite)) => {
                    srs.push(sr);
                    feats.extend(feat);
                    masks.push(finite);
                }
                Err(err) if err.is_oom() && *chunk > 1 => {
                    oom = true;
                    break;
                }
                Err(err) if err.is_oom() => {
                    return Err(CacheError::Config {
                        what: format!(
                            "expert {}: out of memory on {}, even one patch at a time: use a smaller --patch",
                            e.name(),
                            srcache_experts::device_name(e.device())
                        ),
                    })
                }
                Err(err) => return Err(err.into()),
            }
            start += len;
        }
        if oom {
            // Free what the failed attempt left in the caching allocator before retrying smaller.
            drop((srs, feats, masks));
            *chunk /= 2;
            progress.message(&format!(
                "expert {}: out of memory on {}, retrying with batch {}",
                e.name(),
                srcache_experts::device_name(e.device()),
                *chunk
            ));
            continue;
        }
        let cat = |v: &[Tensor]| Tensor::f_cat(v, 0).map_err(torch("join batch chunks"));
        let sr = if srs.len() == 1 { srs.pop().unwrap_or_else(Tensor::new) } else { cat(&srs)? };
        let feat = if feats.is_empty() { None } else { Some(cat(&feats)?) };
        let finite = if masks.len() == 1 { masks.pop().unwrap_or_else(Tensor::new) } else { cat(&masks)? };
        return Ok((sr, feat, finite));
    }
}

/// Casts an expert's outputs to their storage dtypes on the device (so only stored bytes cross the bus).
fn to_storage(e: &Expert, lay: &ExpertLayout, expert: usize, sr: &Tensor, feat: Option<&Tensor>, finite: Tensor) -> Result<OnDevice> {
    let ctx = || format!("expert {} outputs", e.name());
    let store = crate::layout::to_storage(sr, lay.sr_dtype).map_err(torch(ctx()))?;
    let sr_u8 = sr
        .f_mul_scalar(255.0)
        .and_then(|t| t.f_round())
        .and_then(|t| t.f_clamp(0.0, 255.0))
        .and_then(|t| t.f_to_kind(Kind::Uint8))
        .and_then(|t| t.f_permute([0, 2, 3, 1]))
        .map_err(torch(ctx()))?;
    let feat = match feat {
        Some(f) => Some(crate::layout::to_storage(f, lay.feat_dtype).map_err(torch(ctx()))?),
        None => None,
    };
    Ok(OnDevice { expert, sr: store, sr_u8, feat, finite })
}

fn tensor_bytes(t: &Tensor, ctx: &str) -> Result<Vec<u8>> {
    let t = t.f_contiguous().and_then(|t| t.f_to_device(Device::Cpu)).map_err(torch(ctx.to_string()))?;
    let numel = t.numel();
    let size = t.f_kind().map_err(torch(ctx.to_string()))?.elt_size_in_bytes();
    let mut out = vec![0u8; numel * size];
    t.f_copy_data_u8(&mut out, numel).map_err(torch(ctx.to_string()))?;
    Ok(out)
}

fn download(names: &[String], rx: Receiver<Computed>, tx: Sender<GroupOut>) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for c in rx.iter() {
        let n = c.batch.samples.len();
        let mut outs = Vec::with_capacity(c.outs.len());
        for (k, o) in c.outs.into_iter().enumerate() {
            let name = names.get(k).map(String::as_str).unwrap_or("?");
            let ctx = format!("expert {name} outputs to the host");
            // NaN would be stored as black and +inf as white, and train to a NaN loss: an error naming the
            // expert and the first such sample, before anything of the batch is written.
            let finite = o.finite.f_to_kind(Kind::Uint8).map_err(torch(ctx.clone())).and_then(|t| tensor_bytes(&t, &ctx))?;
            if let Some(s) = finite.iter().position(|&f| f == 0) {
                let (sample, source) = c.batch.samples.get(s).map(|x| (x.id.clone(), x.source.clone())).unwrap_or_default();
                return Err(CacheError::Sample {
                    sample,
                    what: format!(
                        "expert {name} returned NaN or infinite values (sr or features) for this patch of {source}; nothing of its batch was written"
                    ),
                });
            }
            let sr_bytes = tensor_bytes(&o.sr, &ctx)?;
            let u8_bytes = tensor_bytes(&o.sr_u8, &ctx)?;
            let feat_bytes = o.feat.as_ref().map(|f| tensor_bytes(f, &ctx)).transpose()?;
            let sz = o.sr_u8.size();
            let (hh, ww) = (sz[1] as u32, sz[2] as u32);
            let per = |len: usize| len / n.max(1);
            let (per_sr, per_u8, per_feat) = (per(sr_bytes.len()), per(u8_bytes.len()), feat_bytes.as_ref().map(|b| per(b.len())));
            let mut split = Vec::with_capacity(n);
            for s in 0..n {
                let sr_u8 = RgbImage::from_raw(ww, hh, u8_bytes[s * per_u8..(s + 1) * per_u8].to_vec())
                    .ok_or_else(|| CacheError::Pipeline { what: format!("expert {name}: sr buffer size mismatch") })?;
                split.push(ExpertOut {
                    sr: sr_bytes[s * per_sr..(s + 1) * per_sr].to_vec(),
                    feat: feat_bytes.as_ref().zip(per_feat).map(|(b, p)| b[s * p..(s + 1) * p].to_vec()),
                    sr_u8,
                });
            }
            outs.push((o.expert, split));
        }
        if tx.send(GroupOut { batch: c.batch, outs }).is_err() {
            break;
        }
    }
    Ok(())
}
