//! The bounded, order-preserving ingest pipeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use image::RgbImage;
use rayon::prelude::*;

use crate::degrade::Variant;
use crate::error::{IngestError, Result, Skipped};
use crate::patch::{crop, grid, luma_variance, patch_id};
use crate::resize::{bicubic_lr, imresize, mod_crop};
use crate::scan::{decode_rgb8, scan, ImageEntry};
use crate::{IngestConfig, PatchSample};

/// A decoded image pair: mod-cropped HR and its LR (given or generated), plus a warning if alpha was dropped.
pub struct PreparedImage {
    pub hr: RgbImage,
    pub lr: RgbImage,
    pub alpha_dropped: bool,
}

/// Decodes an entry's HR (and LR if paired) and checks the LR size, or generates LR with MATLAB bicubic.
pub fn prepare_image(entry: &ImageEntry, scale: u32) -> Result<PreparedImage> {
    let (hr, a1) = decode_rgb8(&entry.hr)?;
    match &entry.lr {
        None => {
            let (hr, lr) = bicubic_lr(&hr, scale);
            Ok(PreparedImage { hr, lr, alpha_dropped: a1 })
        }
        Some(lr_path) => {
            let (lr, a2) = decode_rgb8(lr_path)?;
            let hr = mod_crop(&hr, scale);
            let (want_w, want_h) = (hr.width() / scale, hr.height() / scale);
            if lr.dimensions() != (want_w, want_h) {
                return Err(IngestError::LrSize {
                    path: lr_path.clone(),
                    hr: entry.hr.clone(),
                    got_w: lr.width(),
                    got_h: lr.height(),
                    want_w,
                    want_h,
                    scale,
                });
            }
            Ok(PreparedImage { hr, lr, alpha_dropped: a1 || a2 })
        }
    }
}

fn process(entry: &ImageEntry, cfg: &IngestConfig, variants: &[Variant]) -> Result<(Vec<PatchSample>, bool)> {
    let scale = cfg.scan.scale;
    let img = prepare_image(entry, scale)?;
    let size = cfg.patch.size;
    if img.lr.width() < size || img.lr.height() < size {
        return Err(IngestError::TooSmall {
            path: entry.hr.clone(),
            width: img.hr.width(),
            height: img.hr.height(),
            patch: size,
            scale,
        });
    }
    let mut out = Vec::new();
    for v in variants {
        let lr = if v.steps.is_empty() {
            img.lr.clone()
        } else {
            let blurred = v.apply_hr(&img.hr);
            let lr = imresize(&blurred, img.lr.width(), img.lr.height());
            v.apply_lr(&lr, cfg.seed, &entry.stem)?
        };
        for b in grid(lr.width(), lr.height(), &cfg.patch) {
            if let Some(t) = cfg.patch.flat_threshold {
                if luma_variance(&lr, &b) < t {
                    continue;
                }
            }
            out.push(PatchSample {
                id: patch_id(&entry.stem, &b, &v.name),
                source: entry.hr.display().to_string(),
                patch: b,
                variant: v.name.clone(),
                lr: crop(&lr, &b, 1),
                hr: crop(&img.hr, &b, scale),
            });
        }
    }
    Ok((out, img.alpha_dropped))
}

type Done = (usize, Result<(Vec<PatchSample>, bool)>);

/// Deterministic stream of patch samples (sorted files, row-major patches, variants in config order),
/// whatever the number of workers. At most `queue_depth` images are in flight.
pub struct PatchStream {
    images: Vec<ImageEntry>,
    results: Receiver<Done>,
    tokens: Sender<()>,
    pending: BTreeMap<usize, Result<(Vec<PatchSample>, bool)>>,
    current: std::vec::IntoIter<PatchSample>,
    next: usize,
    strict: bool,
    failed: bool,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    warnings: Vec<String>,
}

impl PatchStream {
    /// Files skipped so far (unpaired, unreadable, too small, wrong LR size), with reasons.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The shared list of skipped files, for a consumer that moves the stream elsewhere (another thread) and
    /// reads the list after the stream ends.
    pub fn skip_log(&self) -> Arc<Mutex<Vec<Skipped>>> {
        self.skipped.clone()
    }

    /// Non-fatal notes (e.g. an alpha channel dropped).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of images the scan found (after pairing).
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Images fully emitted so far.
    pub fn images_done(&self) -> usize {
        self.next
    }
}

impl Iterator for PatchStream {
    type Item = Result<PatchSample>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.current.next() {
                return Some(Ok(s));
            }
            if self.failed || self.next >= self.images.len() {
                return None;
            }
            let Some(done) = self.pending.remove(&self.next) else {
                match self.results.recv() {
                    Ok((i, r)) => {
                        self.pending.insert(i, r);
                        continue;
                    }
                    Err(_) => return None,
                }
            };
            let entry = &self.images[self.next];
            self.next += 1;
            let _ = self.tokens.try_send(());
            match done {
                Ok((samples, alpha)) => {
                    if alpha {
                        self.warnings.push(format!("{}: alpha channel dropped", entry.hr.display()));
                    }
                    self.current = samples.into_iter();
                }
                Err(e) if self.strict => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) => {
                    if let Ok(mut s) = self.skipped.lock() {
                        s.push(Skipped { path: entry.hr.clone(), reason: e.to_string() });
                    }
                }
            }
        }
    }
}

/// Starts the pipeline: a feeder, `workers` decode/LR/patch threads, and the reordering iterator.
pub fn stream(cfg: &IngestConfig) -> Result<PatchStream> {
    let mut report = scan(&cfg.scan)?;
    if let Some(part) = cfg.part {
        let range = crate::partition::select(&report.images, part);
        report.images = report.images[range].to_vec();
    }
    if cfg.strict {
        if let Some(u) = report.unpaired.first() {
            return Err(IngestError::Unpaired {
                path: u.path.clone(),
                lr_dir: cfg.scan.lr_dir.clone().unwrap_or_default(),
            });
        }
    }
    let variants: Vec<Variant> = if cfg.variants.is_empty() {
        vec![Variant::clean()]
    } else {
        cfg.variants.iter().map(|v| Variant::parse(v)).collect::<Result<_>>()?
    };
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        cfg.workers
    };
    let depth = cfg.queue_depth.max(workers).max(1);
    let (token_tx, token_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        let _ = token_tx.try_send(());
    }
    let (job_tx, job_rx) = bounded::<usize>(workers);
    let (res_tx, res_rx) = unbounded::<Done>();
    let images = Arc::new(report.images.clone());
    let n = images.len();
    std::thread::Builder::new()
        .name("ingest-feed".into())
        .spawn(move || {
            for i in 0..n {
                // A token per image in flight: the consumer hands one back per image it finishes.
                if token_rx.recv().is_err() || job_tx.send(i).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| IngestError::Config { what: format!("cannot start ingest thread: {e}") })?;
    for w in 0..workers {
        let (job_rx, res_tx, images) = (job_rx.clone(), res_tx.clone(), images.clone());
        let (cfg, variants) = (cfg.clone(), variants.clone());
        std::thread::Builder::new()
            .name(format!("ingest-{w}"))
            .spawn(move || {
                for i in job_rx {
                    if res_tx.send((i, process(&images[i], &cfg, &variants))).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| IngestError::Config { what: format!("cannot start ingest thread: {e}") })?;
    }
    Ok(PatchStream {
        images: report.images,
        results: res_rx,
        tokens: token_tx,
        pending: BTreeMap::new(),
        current: Vec::new().into_iter(),
        next: 0,
        strict: cfg.strict,
        failed: false,
        skipped: Arc::new(Mutex::new(report.unpaired)),
        warnings: Vec::new(),
    })
}

/// Writes the LR folder for an HR folder as the field's MATLAB script does: mod-crop, `imresize(1/s)`,
/// DIV2K naming (`0001.png` → `0001x4.png`), PNG. Returns (written, skipped). `on_done` is called per image.
pub fn write_lr_folder(
    hr_dir: &Path,
    scale: u32,
    out: &Path,
    strict: bool,
    on_done: &(dyn Fn() + Sync),
) -> Result<(usize, Vec<Skipped>)> {
    let files = crate::scan::list_images(hr_dir)?;
    if files.is_empty() {
        return Err(IngestError::NoImages { path: hr_dir.to_path_buf() });
    }
    std::fs::create_dir_all(out).map_err(|e| IngestError::Write { path: out.to_path_buf(), reason: e.to_string() })?;
    let results: Vec<(PathBuf, Result<()>)> = files
        .par_iter()
        .map(|f| {
            let r = (|| {
                let (hr, _) = decode_rgb8(f)?;
                let (_, lr) = bicubic_lr(&hr, scale);
                let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let dst = out.join(format!("{stem}x{scale}.png"));
                let tmp = out.join(format!(".{stem}x{scale}.png.tmp"));
                lr.save_with_format(&tmp, image::ImageFormat::Png)
                    .and_then(|_| std::fs::rename(&tmp, &dst).map_err(image::ImageError::IoError))
                    .map_err(|e| IngestError::Write { path: dst.clone(), reason: e.to_string() })
            })();
            on_done();
            (f.clone(), r)
        })
        .collect();
    let mut skipped = Vec::new();
    let mut written = 0;
    for (path, r) in results {
        match r {
            Ok(()) => written += 1,
            Err(e) if strict => return Err(e),
            Err(e) => skipped.push(Skipped { path, reason: e.to_string() }),
        }
    }
    Ok((written, skipped))
}
