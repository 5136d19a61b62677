//! Adapter from the run's [`InputConfig`] to the ingest stream.

use crate::config::InputConfig;
use crate::error::{CacheError, Result};

pub(crate) use srcache_ingest::PatchSample;

pub(crate) type SampleStream = Box<dyn Iterator<Item = Result<PatchSample>> + Send>;

pub(crate) fn ingest_config(cfg: &InputConfig) -> srcache_ingest::IngestConfig {
    srcache_ingest::IngestConfig {
        scan: srcache_ingest::ScanConfig { hr_dir: cfg.hr_dir.clone(), lr_dir: cfg.lr_dir.clone(), scale: cfg.scale },
        patch: srcache_ingest::PatchConfig { size: cfg.patch, stride: cfg.stride, flat_threshold: cfg.flat_threshold },
        variants: cfg.variants.clone(),
        seed: cfg.seed,
        workers: cfg.workers,
        ..Default::default()
    }
}

/// The deterministic sample stream, skipping its first `skip` samples and stopping at the config's limit.
pub(crate) fn open(cfg: &InputConfig, skip: u64) -> Result<SampleStream> {
    let stream = srcache_ingest::stream(&ingest_config(cfg))?;
    let take = cfg.limit.map(|l| l.saturating_sub(skip)).unwrap_or(u64::MAX);
    Ok(Box::new(stream.map(|r| r.map_err(CacheError::from)).skip(skip as usize).take(take.min(usize::MAX as u64) as usize)))
}
