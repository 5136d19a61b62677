//! Adapter from the run's [`InputConfig`] to the ingest stream.

use std::sync::{Arc, Mutex};

use srcache_ingest::{ScanReport, Skipped};

use crate::config::InputConfig;
use crate::error::{CacheError, Result};

pub(crate) use srcache_ingest::PatchSample;

pub(crate) type SampleStream = Box<dyn Iterator<Item = Result<PatchSample>> + Send>;

/// The sample stream and the list of files it skipped (filled while it runs).
pub(crate) struct Source {
    pub stream: SampleStream,
    pub skipped: Arc<Mutex<Vec<Skipped>>>,
}

pub(crate) fn ingest_config(cfg: &InputConfig) -> srcache_ingest::IngestConfig {
    srcache_ingest::IngestConfig {
        scan: srcache_ingest::ScanConfig { hr_dir: cfg.hr_dir.clone(), lr_dir: cfg.lr_dir.clone(), scale: cfg.scale },
        patch: cfg.patch_config(),
        variants: cfg.variants.clone(),
        seed: cfg.seed,
        workers: cfg.workers,
        part: cfg.part,
        ..Default::default()
    }
}

/// The input scan, made once per run: the fingerprint of the inputs and the stream come from the same list.
pub(crate) fn scan(cfg: &InputConfig) -> Result<ScanReport> {
    let icfg = ingest_config(cfg);
    icfg.validate()?;
    Ok(srcache_ingest::scan(&icfg.scan)?)
}

/// The deterministic sample stream over `report`, skipping its first `skip` samples and stopping at the
/// config's limit.
pub(crate) fn open(cfg: &InputConfig, report: ScanReport, skip: u64) -> Result<Source> {
    let stream = srcache_ingest::stream_from(&ingest_config(cfg), report)?;
    let skipped = stream.skip_log();
    let take = cfg.limit.map(|l| l.saturating_sub(skip)).unwrap_or(u64::MAX);
    let stream = Box::new(stream.map(|r| r.map_err(CacheError::from)).skip(skip as usize).take(take.min(usize::MAX as u64) as usize));
    Ok(Source { stream, skipped })
}

/// Refuses a patch size no input image can hold, before any expert is loaded (a probe at an absurd patch size
/// would only end in an out-of-memory error). Reads image headers only.
pub(crate) fn check_inputs(cfg: &InputConfig, report: &ScanReport) -> Result<()> {
    let mut images = report.images.clone();
    if let Some(part) = cfg.part {
        let range = srcache_ingest::partition::select(&images, part);
        images = images[range].to_vec();
    }
    let s = cfg.scale.max(1);
    let largest = images
        .iter()
        .filter_map(|e| srcache_ingest::scan::image_dimensions(&e.hr).ok())
        .max_by_key(|&(w, h)| w.min(h))
        .ok_or_else(|| CacheError::Refused { out: cfg.hr_dir.clone(), what: "no readable input image (see the files skipped)".into() });
    match largest {
        Ok((w, h)) if w.min(h) / s < cfg.patch => Err(CacheError::Config {
            what: format!(
                "patch {p} is larger than every input image: the largest is {w}x{h} (HR), {}x{} at x{s}; use --patch {} or less",
                w / s,
                h / s,
                w.min(h) / s,
                p = cfg.patch
            ),
        }),
        // No readable image at all: the stream reports each file as skipped and the run ends with "no samples".
        _ => Ok(()),
    }
}
