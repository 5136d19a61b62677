//! The bounded, order-preserving ingest pipeline.
//!
//! Failure model: a bad input file (unreadable, undecodable, too small, unpaired) is skipped and recorded,
//! or ends a strict run; anything else (a worker panicking, a worker vanishing, an output write failing) ends
//! the run with an error naming the image, in every mode. Workers run each image under `catch_unwind` and
//! announce their exit, and the consumer treats a worker that disappeared or a closed channel while images
//! remain as an error: the stream never hangs on a lost image nor ends early as if the dataset were shorter.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use image::RgbImage;
use rayon::prelude::*;

use crate::budget::{budget_bytes, Budget, BUDGET_ENV};
use crate::degrade::Variant;
use crate::error::{summarise_skipped, IngestError, Result, Skipped};
use crate::inputs::Fingerprints;
use crate::patch::{crop, grid, luma_variance, patch_id};
use crate::resize::{imresize, mod_crop, try_bicubic_lr, SmallerThanScale};
use crate::scan::{check_scale, decode_rgb8, decode_rgb8_checked, image_dimensions, list_dir, scan, unique_stems, ImageEntry, ScanReport};
use crate::{IngestConfig, PatchSample};

/// TEST HOOK, not a setting: when this environment variable holds an image stem, the ingest workers (of
/// `stream` and `write_lr_folder`) panic on purpose when they reach that image. The end-to-end tests use it
/// to check that a real worker panic ends the run with an error naming the file, in bounded time, through
/// the shipped binary (so it is compiled in always; unset, it costs one environment lookup per run).
pub const FAULT_PANIC_ENV: &str = "SRCACHE_FAULT_PANIC_ON";

fn fault_stem() -> Option<String> {
    std::env::var(FAULT_PANIC_ENV).ok().filter(|s| !s.is_empty())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "non-text panic payload".into(),
    }
}

/// Runs one image's work, turning a panic (a bug, e.g. in a decoder) into an error naming the image.
fn guarded<T>(path: &Path, stem: &str, fault: Option<&str>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        if fault == Some(stem) {
            panic!("{FAULT_PANIC_ENV}={stem}: deliberate test fault");
        }
        work()
    }))
    .unwrap_or_else(|p| Err(IngestError::Panic { path: path.to_path_buf(), what: panic_text(p.as_ref()) }))
}

/// A decoded image pair: mod-cropped HR and its LR (given or generated), plus a warning if alpha was dropped.
pub struct PreparedImage {
    pub hr: RgbImage,
    pub lr: RgbImage,
    pub alpha_dropped: bool,
}

/// Decodes an entry's HR (and LR if paired) and checks the LR size, or generates LR with MATLAB bicubic.
/// An HR image smaller than `scale` is an error (`SmallerThanScale`), not an empty LR.
pub fn prepare_image(entry: &ImageEntry, scale: u32) -> Result<PreparedImage> {
    prepare_image_checked(entry, scale, None)
}

/// [`prepare_image`], each file's bytes checked against its fingerprint in `prints` (when given).
fn prepare_image_checked(entry: &ImageEntry, scale: u32, prints: Option<&Fingerprints>) -> Result<PreparedImage> {
    check_scale(scale)?;
    let expect = |p: &Path| prints.and_then(|f| f.get(p));
    let (hr, a1) = decode_rgb8_checked(&entry.hr, expect(&entry.hr))?;
    let small = |SmallerThanScale(width, height)| IngestError::SmallerThanScale { path: entry.hr.clone(), width, height, scale };
    match &entry.lr {
        None => {
            let (hr, lr) = try_bicubic_lr(&hr, scale).map_err(small)?;
            Ok(PreparedImage { hr, lr, alpha_dropped: a1 })
        }
        Some(lr_path) => {
            if hr.width() < scale || hr.height() < scale {
                return Err(small(SmallerThanScale(hr.width(), hr.height())));
            }
            let (lr, a2) = decode_rgb8_checked(lr_path, expect(lr_path))?;
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

/// A sample's `source`: the HR file's path relative to the input root, `/`-separated (`0801.png`,
/// `sub/0802.png`). Not the path as given on the command line: that depended on the working directory and on where
/// the input folder was, so moving a dataset changed its manifest (and the trainer's split, which hashes it).
pub fn source_name(hr: &std::path::Path, root: &std::path::Path) -> String {
    let rel = hr.strip_prefix(root).unwrap_or(hr);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn process(entry: &ImageEntry, cfg: &IngestConfig, variants: &[Variant], prints: Option<&Fingerprints>) -> Result<(Vec<PatchSample>, bool)> {
    let scale = cfg.scan.scale;
    let img = prepare_image_checked(entry, scale, prints)?;
    let size = cfg.patch.size;
    if img.lr.width() < size || img.lr.height() < size {
        return Err(IngestError::TooSmall { path: entry.hr.clone(), width: img.hr.width(), height: img.hr.height(), patch: size, scale });
    }
    let mut out = Vec::new();
    let source = source_name(&entry.hr, &cfg.scan.hr_dir);
    for v in variants {
        let lr = Arc::new(if v.steps.is_empty() {
            img.lr.clone()
        } else {
            let blurred = v.apply_hr(&img.hr);
            let lr = imresize(&blurred, img.lr.width(), img.lr.height());
            v.apply_lr(&lr, cfg.seed, &entry.stem)?
        });
        for b in grid(lr.width(), lr.height(), &cfg.patch) {
            if let Some(t) = cfg.patch.flat_threshold {
                if luma_variance(&lr, &b) < t {
                    continue;
                }
            }
            out.push(PatchSample {
                id: patch_id(&entry.stem, &b, &v.name),
                source: source.clone(),
                patch: b,
                variant: v.name.clone(),
                lr: crop(&lr, &b, 1),
                hr: crop(&img.hr, &b, scale),
                lr_image: lr.clone(),
            });
        }
    }
    Ok((out, img.alpha_dropped))
}

type Processed = (Vec<PatchSample>, bool);

/// What workers tell the consumer.
enum Msg {
    Done(usize, Result<Processed>),
    /// A worker ended: `Some(i)` when it ended while working on image `i` (it unwound past the panic guard,
    /// so that image will never be reported).
    Exited(Option<usize>),
}

/// Sends [`Msg::Exited`] however the worker ends, unwinding included.
struct ExitNotice {
    tx: Sender<Msg>,
    current: Option<usize>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Exited(self.current));
    }
}

/// Deterministic stream of patch samples (sorted files, row-major patches, variants in config order),
/// whatever the number of workers. At most `queue_depth` images are in flight. Bad input files are skipped
/// (see [`PatchStream::skipped`]) or, in strict mode, end the stream with their error; any other failure
/// ends it with an error in every mode (see the module doc). After an error the stream yields nothing more.
pub struct PatchStream {
    images: Vec<ImageEntry>,
    results: Receiver<Msg>,
    tokens: Sender<()>,
    pending: BTreeMap<usize, Result<Processed>>,
    current: std::vec::IntoIter<PatchSample>,
    next: usize,
    strict: bool,
    failed: bool,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    warnings: Vec<String>,
    /// The workers' memory bound (see [`crate::budget`]).
    budget: Arc<Budget>,
    /// Warnings from the workers (an image over the memory budget), moved into `warnings` as images are handed on.
    notes: Arc<Mutex<Vec<String>>>,
}

impl Drop for PatchStream {
    fn drop(&mut self) {
        // Workers waiting for memory give up instead of waiting for a consumer that is gone.
        self.budget.close();
    }
}

impl PatchStream {
    /// Files skipped so far (unpaired, unreadable, too small, wrong LR size, duplicate stems), with reasons.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The shared list of skipped files, for a consumer that moves the stream elsewhere (another thread) and
    /// reads the list after the stream ends.
    pub fn skip_log(&self) -> Arc<Mutex<Vec<Skipped>>> {
        self.skipped.clone()
    }

    /// Non-fatal notes (e.g. an alpha channel dropped, a symlink loop not followed twice).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of images the scan found (after pairing).
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// The images the stream reads, in stream order.
    pub fn images(&self) -> &[ImageEntry] {
        &self.images
    }

    /// Images fully emitted so far.
    pub fn images_done(&self) -> usize {
        self.next
    }

    /// Waits for one worker message. Errors end the stream: a failure that is not a bad input (reported at
    /// once, whatever its position), a worker gone while working on an image, or every worker gone while
    /// images remain.
    fn receive(&mut self) -> Result<()> {
        let lost = |i: usize| IngestError::WorkersLost { path: self.images[i].hr.clone() };
        match self.results.recv() {
            Ok(Msg::Done(_, Err(e))) if !e.is_input_fault() => Err(e),
            Ok(Msg::Done(i, r)) => {
                self.pending.insert(i, r);
                Ok(())
            }
            Ok(Msg::Exited(Some(i))) => Err(lost(i)),
            // A worker ending normally (no more jobs); a later `recv` fails if all ended with images left.
            Ok(Msg::Exited(None)) => Ok(()),
            Err(_) => Err(lost(self.next)),
        }
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
                if let Err(e) = self.receive() {
                    self.failed = true;
                    return Some(Err(e));
                }
                continue;
            };
            let entry = &self.images[self.next];
            self.budget.release(self.next, self.next + 1);
            self.next += 1;
            let _ = self.tokens.try_send(());
            if let Ok(mut n) = self.notes.lock() {
                self.warnings.append(&mut n);
            }
            match done {
                Ok((samples, alpha)) => {
                    if alpha {
                        self.warnings.push(format!("{}: alpha channel dropped", entry.hr.display()));
                    }
                    self.current = samples.into_iter();
                }
                Err(e) if self.strict || !e.is_input_fault() => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) => {
                    if let Ok(mut s) = self.skipped.lock() {
                        s.push(Skipped::new(&entry.hr, &e));
                    }
                }
            }
        }
    }
}

/// Starts the pipeline: a feeder, `workers` decode/LR/patch threads, and the reordering iterator.
/// The configuration is checked first (scale, patch, stride, variants).
pub fn stream(cfg: &IngestConfig) -> Result<PatchStream> {
    cfg.validate()?;
    stream_from(cfg, scan(&cfg.scan)?)
}

/// [`stream`] over a scan already made of `cfg.scan` (e.g. one whose inputs were just fingerprinted). With
/// `cfg.part`, only that part of the scan's images is streamed.
pub fn stream_from(cfg: &IngestConfig, mut report: ScanReport) -> Result<PatchStream> {
    cfg.validate()?;
    if let Some(part) = cfg.part {
        let range = crate::partition::select(&report.images, part);
        report.images = report.images[range].to_vec();
    }
    if cfg.strict {
        if let Some(s) = report.skipped.first() {
            return Err(s.to_error());
        }
    }
    let variants = cfg.parsed_variants()?;
    let workers = if cfg.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) } else { cfg.workers };
    let depth = cfg.queue_depth.max(workers).max(1);
    let (token_tx, token_rx) = bounded::<()>(depth);
    for _ in 0..depth {
        let _ = token_tx.try_send(());
    }
    let (job_tx, job_rx) = bounded::<usize>(workers);
    let (res_tx, res_rx) = unbounded::<Msg>();
    let images = Arc::new(report.images.clone());
    let n = images.len();
    let fault = fault_stem();
    let budget = Arc::new(Budget::new(budget_bytes()));
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let spawn_err = |e: std::io::Error| IngestError::Config { what: format!("cannot start ingest thread: {e}") };
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
        .map_err(spawn_err)?;
    for w in 0..workers {
        let (job_rx, res_tx, images) = (job_rx.clone(), res_tx.clone(), images.clone());
        let (cfg, variants, fault, prints) = (cfg.clone(), variants.clone(), fault.clone(), report.fingerprints.clone());
        let (budget, notes) = (budget.clone(), notes.clone());
        std::thread::Builder::new()
            .name(format!("ingest-{w}"))
            .spawn(move || {
                let mut notice = ExitNotice { tx: res_tx.clone(), current: None };
                for i in job_rx {
                    notice.current = Some(i);
                    let entry = &images[i];
                    // Memory: the estimate from the header (an unreadable header costs nothing here; the
                    // decode reports it).
                    let cost = image_dimensions(&entry.hr).map(|(w, h)| crate::budget::cost(w, h, variants.len())).unwrap_or(0);
                    if cost > budget.limit() {
                        if let Ok(mut n) = notes.lock() {
                            n.push(format!(
                                "{}: needs about {} MiB to process, over the decode memory budget of {} MiB ({BUDGET_ENV}): processed when at the head of the stream, beside no more than the budget",
                                entry.hr.display(),
                                cost >> 20,
                                budget.limit() >> 20
                            ));
                        }
                    }
                    if !budget.acquire(i, cost) {
                        // The stream was dropped: nobody waits for this image.
                        notice.current = None;
                        return;
                    }
                    let r = guarded(&entry.hr, &entry.stem, fault.as_deref(), || process(entry, &cfg, &variants, prints.as_deref()));
                    notice.current = None;
                    if res_tx.send(Msg::Done(i, r)).is_err() {
                        return;
                    }
                }
            })
            .map_err(spawn_err)?;
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
        skipped: Arc::new(Mutex::new(report.skipped)),
        warnings: report.notes,
        budget,
        notes,
    })
}

/// `p` made absolute with its links resolved, also when it does not exist yet (its nearest existing ancestor
/// is resolved and the rest appended).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            return tail.iter().rev().fold(c, |acc: PathBuf, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// An LR folder inside (or equal to) its HR folder would mix LR files into the HR images the next scan reads.
fn check_lr_out(hr_dir: &Path, out: &Path) -> Result<()> {
    let (hr, o) = (resolved(hr_dir), resolved(out));
    if o.starts_with(&hr) {
        return Err(IngestError::Refused {
            path: out.to_path_buf(),
            what: format!(
                "is the HR folder {} or inside it: the LR files would be read as HR images by the next scan; choose an --out outside it (nothing was written)",
                hr_dir.display()
            ),
        });
    }
    if out.exists() && !out.is_dir() {
        return Err(IngestError::Refused { path: out.to_path_buf(), what: "is a file, not a folder (nothing was written)".into() });
    }
    Ok(())
}

/// An exclusive flock on the directory `dir` itself, held while the returned handle lives.
fn lock_folder(dir: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(dir).map_err(|e| IngestError::write(dir, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(IngestError::Refused {
            path: dir.to_path_buf(),
            what: "another srcache process is writing this folder (its lock is held); wait for it or stop it (nothing was written)".into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(IngestError::write(dir, e)),
    }
}

/// PNG bytes of `img` (`path` names the file they are for, in an error).
fn png_bytes(path: &Path, img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| IngestError::write(path, e))?;
    Ok(buf.into_inner())
}

/// `0001.png` -> `0001x4.png`, keeping a stem that is not UTF-8 as it is.
fn lr_file_name(hr: &Path, scale: u32) -> std::ffi::OsString {
    let mut name = hr.file_stem().map(|s| s.to_os_string()).unwrap_or_default();
    name.push(format!("x{scale}.png"));
    name
}

/// Writes the LR folder for an HR folder as the field's MATLAB script does: mod-crop, `imresize(1/s)`,
/// DIV2K naming (`0001.png` → `0001x4.png`), PNG, each file written atomically. Returns (written, skipped).
/// `on_done` is called per image. Bad input files (and same-stem files, whose LR names would collide) are
/// skipped, or fail a strict run; a failed write or a panic fails the run in every mode, and so does a run
/// that writes nothing.
pub fn write_lr_folder(hr_dir: &Path, scale: u32, out: &Path, strict: bool, on_done: &(dyn Fn() + Sync)) -> Result<(usize, Vec<Skipped>)> {
    check_scale(scale)?;
    let listing = list_dir(hr_dir)?;
    if listing.files.is_empty() {
        return Err(IngestError::NoImages { path: hr_dir.to_path_buf() });
    }
    let (files, dups) = unique_stems(listing.files);
    let mut skipped = listing.skipped;
    skipped.extend(dups);
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    if strict {
        if let Some(s) = skipped.first() {
            return Err(s.to_error());
        }
    }
    check_lr_out(hr_dir, out)?;
    std::fs::create_dir_all(out).map_err(|e| IngestError::write(out, e))?;
    // Held for the whole run, on the folder itself (no lock file among the LR images): a second run into the
    // same folder is refused instead of racing this one's writes.
    let _lock = lock_folder(out)?;
    let fault = fault_stem();
    let lr_of = |f: &PathBuf| -> Result<Vec<u8>> {
        let (hr, _) = decode_rgb8(f)?;
        let (_, lr) = try_bicubic_lr(&hr, scale).map_err(|SmallerThanScale(width, height)| IngestError::SmallerThanScale {
            path: f.clone(),
            width,
            height,
            scale,
        })?;
        png_bytes(&out.join(lr_file_name(f, scale)), &lr)
    };
    // Files already in --out under an LR name are overwritten only when they hold exactly what this run writes
    // (a rerun); anything else there is a user's file or another run's LR, and the whole run is refused before
    // it writes a byte. Those images are therefore computed first.
    let (existing, fresh): (Vec<_>, Vec<_>) = files.iter().partition(|(_, f)| out.join(lr_file_name(f, scale)).symlink_metadata().is_ok());
    let conflicts: Vec<PathBuf> = existing
        .par_iter()
        .filter_map(|(_, f)| {
            let target = out.join(lr_file_name(f, scale));
            match (lr_of(f), std::fs::read(&target)) {
                (Ok(bytes), Ok(there)) if bytes == there => None,
                // An input fault is reported as a skip below; it writes nothing either way.
                (Err(e), _) if e.is_input_fault() => None,
                _ => Some(target),
            }
        })
        .collect();
    if let Some(first) = conflicts.first() {
        let more = if conflicts.len() > 1 { format!(" (and {} more)", conflicts.len() - 1) } else { String::new() };
        return Err(IngestError::Refused {
            path: first.clone(),
            what: format!(
                "cannot write here: it already exists and is not the LR this run writes{more}; not overwritten (nothing was written): move it, or choose another --out"
            ),
        });
    }
    // Set by the first error that ends the run, so the other workers stop taking new files.
    let stop = AtomicBool::new(false);
    let results: Vec<(PathBuf, Option<Result<()>>)> = existing
        .iter()
        .chain(&fresh)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|(stem, f)| {
            if stop.load(Ordering::Relaxed) {
                return (f.clone(), None);
            }
            let target = out.join(lr_file_name(f, scale));
            let r = guarded(f, stem, fault.as_deref(), || {
                let bytes = lr_of(f)?;
                if std::fs::read(&target).is_ok_and(|there| there == bytes) {
                    return Ok(());
                }
                srcache_formats::write_atomic(&target, &bytes).map_err(|e| IngestError::write(&target, e))
            });
            if r.as_ref().is_err_and(|e| strict || !e.is_input_fault()) {
                stop.store(true, Ordering::Relaxed);
            }
            on_done();
            (f.clone(), Some(r))
        })
        .collect();
    let mut written = 0;
    for (path, r) in results {
        match r {
            None => {}
            Some(Ok(())) => written += 1,
            Some(Err(e)) if strict || !e.is_input_fault() => return Err(e),
            Some(Err(e)) => skipped.push(Skipped::new(&path, &e)),
        }
    }
    if written == 0 {
        return Err(IngestError::NoSamples { path: out.to_path_buf(), summary: summarise_skipped(files.len(), &skipped) });
    }
    Ok((written, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream over two (never read) images whose workers are played by the test through `tx`.
    fn played(strict: bool) -> (PatchStream, Sender<Msg>) {
        let images = ["a", "b"].map(|s| ImageEntry { stem: s.into(), hr: PathBuf::from(format!("/in/{s}.png")), lr: None }).to_vec();
        let (tx, rx) = unbounded();
        let (tokens, _) = bounded(4);
        let s = PatchStream {
            images,
            results: rx,
            tokens,
            pending: BTreeMap::new(),
            current: Vec::new().into_iter(),
            next: 0,
            strict,
            failed: false,
            skipped: Arc::new(Mutex::new(Vec::new())),
            warnings: Vec::new(),
            budget: Arc::new(Budget::new(1 << 30)),
            notes: Arc::default(),
        };
        (s, tx)
    }

    fn only_error(s: PatchStream) -> String {
        let items: Vec<_> = s.collect();
        assert_eq!(items.len(), 1, "one error, then the end");
        items.into_iter().next().and_then(|r| r.err()).map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn workers_gone_with_images_left_is_an_error_not_an_end() {
        // Every sender dropped before image 0 was reported: not an empty dataset, an error naming it.
        let (s, tx) = played(false);
        drop(tx);
        assert_eq!(only_error(s), "/in/a.png: the ingest workers stopped before this image was processed");

        // A worker ended while working on image 1 (past its panic guard) while others live on: no wait forever.
        let (s, tx) = played(false);
        tx.send(Msg::Done(0, Ok((Vec::new(), false)))).expect("send");
        tx.send(Msg::Exited(Some(1))).expect("send");
        assert_eq!(only_error(s), "/in/b.png: the ingest workers stopped before this image was processed");
    }

    #[test]
    fn input_faults_skip_unless_strict_and_other_errors_always_end() {
        let bad = |i: usize| Msg::Done(i, Err(IngestError::NotAFile { path: PathBuf::from("/in/a.png") }));
        let panic = Msg::Done(1, Err(IngestError::Panic { path: PathBuf::from("/in/b.png"), what: "boom".into() }));

        let (mut s, tx) = played(false);
        tx.send(bad(0)).expect("send");
        tx.send(Msg::Done(1, Ok((Vec::new(), false)))).expect("send");
        drop(tx);
        assert!(s.next().is_none(), "both images done: the end");
        assert_eq!(s.skipped().len(), 1);

        let (s, tx) = played(true);
        tx.send(bad(0)).expect("send");
        assert!(only_error(s).contains("not a regular file"));

        // A panic on image 1 is reported at once, before image 0 is in.
        let (s, tx) = played(false);
        tx.send(panic).expect("send");
        assert!(only_error(s).contains("panicked on this image: boom"));
    }
}
