//! srcache-cache: run frozen experts (TorchScript files or built-in analytic upscalers) once over every
//! patch of a dataset and write their outputs and features to compressed, checksummed shards; resumable.
//!
//! Resume works because the ingest stream is deterministic: the dataset writer reports how many samples
//! sit in complete shards, the run skips that many and continues. Batches are aligned to multiples of the
//! batch size from the stream start, so a resumed run feeds the experts exactly the same batches as an
//! uninterrupted one and produces bit-identical outputs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use srcache_formats::{DatasetOptions, DatasetWriter};
use tch::Device;

mod config;
mod device;
mod error;
mod layout;
pub mod merge;
pub mod output;
mod overrides;
pub mod pca;
mod pipeline;
mod source;
pub mod storage;

pub use config::{CacheConfig, ExpertConfig, InputConfig, Placement, CONFIG_FILE, DEFAULT_HALO, DONE_FILE, INPUTS_FILE, LOCK_FILE, PARTS_DIR};
pub use device::DeviceTime;
pub use error::{CacheError, Result};
pub use merge::{merge, MergeSummary};
pub use output::{remove_cache, SIDECARS};
pub use overrides::CacheOverrides;
pub use srcache_experts::{parse_devices, Builtin, Expert, ExpertSource, Probe};
pub use storage::{ExpertStorage, StoragePart, StoragePreset};

use layout::Layout;
pub use pipeline::PSNR_CAP;
use pipeline::{run_pipeline, secs, Group, Plan};

/// Progress reporting, so the library stays UI-free (the CLI draws an indicatif bar).
pub trait Progress: Sync {
    /// `total`: samples expected in the dataset if known; `done`: already in complete shards.
    fn start(&self, _total: Option<u64>, _done: u64) {}
    /// `samples` more written, `bytes` compressed bytes.
    fn advance(&self, _samples: u64, _bytes: u64) {}
    fn message(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Seconds of busy time per stage (summed over the threads of the stage).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    pub ingest_s: f64,
    pub forward_s: f64,
    pub compress_s: f64,
    pub write_s: f64,
    /// Fitting the feature PCA bases before the pipeline starts (0 when loaded or not asked for).
    #[serde(default)]
    pub pca_fit_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Samples in the dataset at the end.
    pub samples: u64,
    /// Of those, samples found in complete shards at start (resumed).
    pub resumed: u64,
    /// Samples computed and written by this invocation.
    pub written: u64,
    pub shards: u64,
    /// Bytes of the shard files.
    pub bytes: u64,
    /// What the same tensors would take as raw f32.
    pub raw_f32_bytes: u64,
    /// Mean Y-PSNR (dB) per expert over the samples written by this invocation.
    pub mean_psnr: BTreeMap<String, f64>,
    pub stages: StageTimes,
    /// Wall time of the pipeline proper (first sample in to last sample written), without expert loading.
    pub pipeline_s: f64,
    pub wall_s: f64,
    /// The run was already complete: nothing was done.
    pub no_op: bool,
    /// Each device worker's busy and idle time (idle = waiting for the host to hand it a batch).
    #[serde(default)]
    pub devices: Vec<DeviceTime>,
    /// Input files the run skipped, with the reason (also in the manifest's `srcache.skipped`).
    #[serde(default)]
    pub skipped: Vec<srcache_ingest::Skipped>,
}

impl CacheSummary {
    pub fn ratio(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.raw_f32_bytes as f64 / self.bytes as f64
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// Builds the device groups: data parallel = every device runs every expert; expert split = each expert on
/// its pinned device.
fn plan_groups(cfg: &CacheConfig) -> Result<(Vec<Group>, bool)> {
    match cfg.placement {
        Placement::DataParallel => {
            let devices = parse_devices(&cfg.devices)?;
            let all: Vec<usize> = (0..cfg.experts.len()).collect();
            Ok((devices.into_iter().map(|device| Group { device, experts: all.clone() }).collect(), false))
        }
        Placement::ExpertSplit => {
            let mut groups: Vec<(String, Group)> = Vec::new();
            for (i, e) in cfg.experts.iter().enumerate() {
                let spec = e.device.clone().unwrap_or_default();
                let device = match parse_devices(&spec)?.as_slice() {
                    [d] => *d,
                    _ => return Err(CacheError::Config { what: format!("expert {}: one device, got {spec:?}", e.name) }),
                };
                match groups.iter_mut().find(|(s, _)| *s == spec) {
                    Some((_, g)) => g.experts.push(i),
                    None => groups.push((spec, Group { device, experts: vec![i] })),
                }
            }
            Ok((groups.into_iter().map(|(_, g)| g).collect(), true))
        }
    }
}

fn shard_bytes(dir: &Path) -> Result<(u64, u64)> {
    let mut n = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".srs") {
            n += 1;
            bytes += entry.metadata().map_err(io(dir))?.len();
        }
    }
    Ok((n, bytes))
}

/// How a run treats what is already in its output directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Delete the cache srcache made there before (its own files only) and start over.
    pub force: bool,
}

/// Runs (or resumes, or recognises as done) a cache run.
pub fn run(cfg: &CacheConfig, progress: &dyn Progress) -> Result<CacheSummary> {
    run_with(cfg, &RunOptions::default(), progress)
}

/// [`run`] with options. A directory that holds a different run (config or input files) is refused with the
/// difference named; `force` starts over instead.
pub fn run_with(cfg: &CacheConfig, opts: &RunOptions, progress: &dyn Progress) -> Result<CacheSummary> {
    let t_start = Instant::now();
    cfg.validate()?;
    let dir = cfg.dataset_dir();
    if cfg.input.part.is_some() {
        // The root of a partitioned cache holds only `parts/` and, after `srcache merge`, its manifest.
        output::CACHE_ROOT.state(&cfg.out)?;
    }
    // Inputs are checked before anything is written: a refused patch size leaves no directory behind.
    let mut report = source::scan(&cfg.input)?;
    source::check_inputs(&cfg.input, &report)?;
    // An exported expert that says it cannot take the patch size is refused here, before the output folder is
    // claimed or any record is written in it.
    for e in &cfg.experts {
        // What the experts are run on: the patch and its halo.
        let p = (cfg.input.patch + 2 * cfg.input.halo) as usize;
        srcache_experts::check_size(&e.name, &e.source()?, p, p)?;
    }
    // The lock first: a `--force` must never remove what another running process is writing.
    let _lock = output::claim(&dir, opts.force)?;
    output::forget_unstarted(&dir)?;
    output::check_or_save_config(cfg, &dir)?;
    // The stream checks every file it decodes against these fingerprints: an input replaced mid-run (even if
    // restored later) fails the run instead of becoming samples a rerun would call complete.
    output::check_or_save_inputs(&dir, &report.fingerprint(&source::ingest_config(&cfg.input).scan))?;
    if let Some(mut s) = output::read_done(&dir)? {
        s.no_op = true;
        s.written = 0;
        s.wall_s = t_start.elapsed().as_secs_f64();
        return Ok(s);
    }

    // Load every expert on its devices first: a bad file, a wrong shape or scale fails here, before work.
    let (groups, broadcast) = plan_groups(cfg)?;
    let mut loaded: Vec<Vec<Expert>> = Vec::with_capacity(groups.len());
    for g in &groups {
        let mut v = Vec::with_capacity(g.experts.len());
        for &i in &g.experts {
            let e = &cfg.experts[i];
            let p = cfg.input.patch as usize;
            let expert = Expert::load(&e.name, &e.source()?, cfg.input.scale, g.device, p).map_err(|err| match err.is_oom() {
                true => CacheError::Config {
                    what: format!(
                        "expert {}: out of memory on a probe batch of two {p}x{p} LR patches at x{} on {}: use a smaller --patch",
                        e.name,
                        cfg.input.scale,
                        srcache_experts::device_name(g.device)
                    ),
                },
                false => err.into(),
            })?;
            v.push(expert);
        }
        loaded.push(v);
    }
    let mut probes: Vec<Option<&Expert>> = vec![None; cfg.experts.len()];
    for (g, experts) in groups.iter().zip(&loaded) {
        for (&i, e) in g.experts.iter().zip(experts) {
            probes[i].get_or_insert(e);
        }
    }
    let probes: Vec<&Expert> = probes.into_iter().flatten().collect();
    let t_pca = Instant::now();
    let bases = pca::fit_or_load(cfg, &probes, &report, progress)?;
    let pca_fit_s = t_pca.elapsed().as_secs_f64();
    for (name, b) in &bases {
        progress.message(&format!(
            "expert {name}: features stored as {} of {} PCA components ({:.2}% of the variance)",
            b.k,
            b.channels,
            100.0 * b.explained_variance()
        ));
    }
    let layout = Layout::build(cfg, &probes, &bases)?;

    let opts = DatasetOptions { target_shard_bytes: cfg.target_shard_bytes };
    let (writer, resume) = DatasetWriter::create_or_resume(&dir, layout.schema.clone(), opts)?;
    let batch = cfg.batch as u64;
    let skip = resume.samples / batch * batch;
    let source = source::open(&cfg.input, report, skip)?;
    let skip_log = source.skipped.clone();
    progress.start(cfg.input.limit, resume.samples);
    if resume.samples > 0 {
        progress.message(&format!("resuming after {} samples in {} complete shards", resume.samples, resume.shards));
    }
    let compress_workers = match cfg.compress_workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(1),
        n => n,
    };
    let plan = Plan {
        layout: &layout,
        groups,
        broadcast,
        batch: cfg.batch,
        fp16: cfg.fp16,
        compress_workers,
        drop_first: resume.samples - skip,
        first_seq: skip,
    };
    let t_pipe = Instant::now();
    let (mut writer, stats) = run_pipeline(plan, loaded, source.stream, writer, progress)?;
    let pipeline_s = t_pipe.elapsed().as_secs_f64();
    let skipped = skip_log.lock().map(|s| s.clone()).unwrap_or_default();
    for s in &skipped {
        progress.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if resume.samples + stats.written == 0 {
        let why: Vec<String> = skipped.iter().take(3).map(|s| format!("{}: {}", s.path.display(), s.reason)).collect();
        return Err(CacheError::Refused {
            out: dir.clone(),
            what: format!(
                "no samples: no input image yielded a {p}x{p} LR patch{}{}",
                if why.is_empty() { String::new() } else { format!(" ({} skipped, e.g. {})", skipped.len(), why.join("; ")) },
                if skipped.len() > 3 { ", ..." } else { "" },
                p = cfg.input.patch
            ),
        });
    }
    let listed = serde_json::to_string(&skipped).map_err(|e| CacheError::Pipeline { what: format!("skipped list: {e}") })?;
    writer.set_manifest_metadata(srcache_formats::SKIPPED_KEY, listed);
    let t_fin = Instant::now();
    let ds = writer.finish()?;
    let write_extra = t_fin.elapsed().as_secs_f64();
    let _ = ds;

    let (shards, bytes) = shard_bytes(&dir)?;
    let samples = resume.samples + stats.written;
    let mean_psnr = layout
        .experts
        .iter()
        .zip(&stats.psnr_sum)
        .map(|(e, s)| (e.name.clone(), if stats.written > 0 { s / stats.written as f64 } else { 0.0 }))
        .collect();
    let summary = CacheSummary {
        samples,
        resumed: resume.samples,
        written: stats.written,
        shards,
        bytes,
        raw_f32_bytes: samples * layout.raw_f32_bytes(),
        mean_psnr,
        stages: StageTimes {
            ingest_s: secs(&stats.clock.ingest),
            forward_s: secs(&stats.clock.forward),
            compress_s: secs(&stats.clock.compress),
            write_s: secs(&stats.clock.write) + write_extra,
            pca_fit_s,
        },
        pipeline_s,
        wall_s: t_start.elapsed().as_secs_f64(),
        no_op: false,
        devices: stats.devices,
        skipped,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| CacheError::Pipeline { what: format!("serialise summary: {e}") })?;
    srcache_formats::write_atomic(&dir.join(DONE_FILE), json.as_bytes())?;
    Ok(summary)
}

/// Times the experts' forward pass alone (no ingest, no compression, no disk) over the first `batches`
/// batches of the run's own LR patches, pre-loaded on `device`: the baseline of `srcache bench cache`. Returns samples/s.
pub fn forward_only_throughput(cfg: &CacheConfig, device: Device, batches: usize) -> Result<f64> {
    // On a worker thread like the pipeline's device workers: torch's intra-op threading is per thread.
    std::thread::scope(|s| {
        s.spawn(|| forward_only_inner(cfg, device, batches))
            .join()
            .unwrap_or_else(|_| Err(CacheError::Pipeline { what: "benchmark thread panicked".into() }))
    })
}

fn forward_only_inner(cfg: &CacheConfig, device: Device, batches: usize) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    // The pipeline's expert input: the patch and its halo.
    let p = (cfg.input.patch + 2 * cfg.input.halo) as i64;
    let mut experts = Vec::new();
    for e in &cfg.experts {
        experts.push(Expert::load(&e.name, &e.source()?, cfg.input.scale, device, p as usize)?);
    }
    // The same real patches the pipeline sees, not noise: some kernels' speed depends on the data
    // (denormals in random-weight nets), so a fair baseline must run on the same inputs.
    let mut inputs = Vec::new();
    let mut stream = source::open(&cfg.input, source::scan(&cfg.input)?, 0)?.stream;
    let mut total = 0usize;
    'outer: for _ in 0..batches {
        let mut lr = Vec::new();
        let mut n = 0i64;
        for _ in 0..cfg.batch {
            match stream.next() {
                Some(sample) => lr.extend_from_slice(pipeline::expert_input(&sample?, cfg.input.halo).0.as_raw()),
                None if n == 0 => break 'outer,
                None => break,
            }
            n += 1;
        }
        let x = tch::Tensor::f_from_slice(&lr)
            .and_then(|t| t.f_reshape([n, p, p, 3]))
            .and_then(|t| t.f_permute([0, 3, 1, 2]))
            .and_then(|t| t.f_to_kind(tch::Kind::Float))
            .and_then(|t| t.f_div_scalar(255.0))
            .and_then(|t| t.f_contiguous())
            .and_then(|t| t.f_to_device(device))
            .map_err(error::torch("bench input"))?;
        total += n as usize;
        inputs.push(x);
    }
    // The stream's decode workers run ahead in the background: stop them before timing.
    drop(stream);
    let Some(first) = inputs.first() else {
        return Err(CacheError::Pipeline { what: "no samples to benchmark on".into() });
    };
    let autocast = cfg.fp16 && device.is_cuda();
    let run = |e: &Expert, x: &tch::Tensor| -> Result<()> {
        // The pipeline's call (finiteness mask computed, checked on the host later): no extra device sync.
        let (sr, feat, _finite) = tch::autocast(autocast, || e.forward_masked(x))?;
        // The device-to-host copy of the stored dtype is part of the work: the pipeline cannot avoid it either.
        let _ = sr.f_to_kind(tch::Kind::Half).and_then(|t| t.f_to_device(Device::Cpu)).map_err(error::torch("bench copy"))?;
        if let Some(f) = feat {
            let _ = f.f_to_kind(tch::Kind::Half).and_then(|t| t.f_to_device(Device::Cpu)).map_err(error::torch("bench copy"))?;
        }
        Ok(())
    };
    for e in &experts {
        run(e, first)?;
    }
    let t0 = Instant::now();
    for x in &inputs {
        for e in &experts {
            run(e, x)?;
        }
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}
