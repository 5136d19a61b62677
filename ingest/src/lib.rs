//! srcache-ingest: from a folder of HR images (DF2K, DIV2K, Set5, …) to a deterministic stream of LR/HR patch
//! pairs. Scan and pair files, decode in parallel, make LR with MATLAB-exact bicubic, apply seeded degradation
//! variants, cut a `PatchGrid`, and hand samples on through a bounded pipeline whose output order does not
//! depend on the worker count (so a resumed run can skip exactly the samples it already has).
//! Also home of the image maths the other stages share: `resize` and Y-channel `metrics`.

pub mod budget;
pub mod degrade;
pub mod error;
pub mod inputs;
pub mod metrics;
pub mod partition;
pub mod patch;
pub mod photos;
pub mod resize;
pub mod scan;
pub mod shards;
mod stream;

pub use degrade::Variant;
pub use error::{summarise_skipped, BoxError, IngestError, Result, Skipped};
pub use inputs::{InputDiff, InputList};
pub use partition::Part;
pub use patch::{PatchConfig, DEFAULT_PATCH};
/// Re-exported so tools can size thread pools (e.g. the 1-core benchmark) with the same rayon.
pub use rayon;
pub use scan::{decode_all, scan, ImageEntry, ScanConfig, ScanReport};
pub use shards::{patch_schema, write_patch_dataset, IngestRecord, PatchDatasetSummary, PatchShardOptions, RECORD_FILE};
pub use stream::{prepare_image, stream, stream_from, write_lr_folder, PatchStream, PreparedImage, FAULT_PANIC_ENV};

use image::RgbImage;
use srcache_formats::PatchBox;

/// Encodes `img` as PNG and writes it atomically (never a half-written image under the real name).
pub fn write_png(path: &std::path::Path, img: &RgbImage) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| IngestError::write(path, e))?;
    srcache_formats::write_atomic(path, buf.get_ref()).map_err(|e| IngestError::write(path, e))
}

/// Most decode workers (or images in flight) a run accepts: more threads than this is a typo, and spawning
/// them would end in an abort rather than an error.
pub const MAX_WORKERS: usize = 1024;

/// Everything one ingest run needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    pub scan: ScanConfig,
    pub patch: PatchConfig,
    /// Degradation variants (see [`degrade`]); empty means the clean bicubic pair only.
    pub variants: Vec<String>,
    pub seed: u64,
    /// Decode/LR workers; 0 = all cores.
    pub workers: usize,
    /// Fail on the first bad file instead of skipping it.
    pub strict: bool,
    /// Images in flight at most (bounds memory whatever the dataset size).
    pub queue_depth: usize,
    /// Only this part of the sorted image list (see [`partition`]); None = all of it.
    pub part: Option<Part>,
}

impl IngestConfig {
    /// Checks scale, patch size, stride, threshold, variants and queue depth before any file is read.
    pub fn validate(&self) -> Result<()> {
        self.scan.validate()?;
        self.patch.validate()?;
        self.parsed_variants()?;
        if self.queue_depth == 0 || self.queue_depth > MAX_WORKERS {
            return Err(IngestError::Config { what: format!("queue depth {} is outside 1..={MAX_WORKERS}", self.queue_depth) });
        }
        if self.workers > MAX_WORKERS {
            return Err(IngestError::Config { what: format!("workers {} is outside 0..={MAX_WORKERS} (0 = all cores)", self.workers) });
        }
        Ok(())
    }

    /// The variants, parsed (the clean pair when none is given).
    pub fn parsed_variants(&self) -> Result<Vec<Variant>> {
        if self.variants.is_empty() {
            return Ok(vec![Variant::clean()]);
        }
        self.variants.iter().map(|v| Variant::parse(v)).collect()
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            scan: ScanConfig::default(),
            patch: PatchConfig::default(),
            variants: Vec::new(),
            seed: 0,
            workers: 0,
            strict: false,
            queue_depth: 8,
            part: None,
        }
    }
}

/// One training sample before the experts run: an LR patch, its HR patch, and where it came from.
#[derive(Debug, Clone)]
pub struct PatchSample {
    /// `<stem>_<x>_<y>_<variant>`, stable across runs.
    pub id: String,
    /// The HR source file, relative to the input root (`stream::source_name`).
    pub source: String,
    /// The patch box in LR pixels.
    pub patch: PatchBox,
    pub variant: String,
    pub lr: RgbImage,
    pub hr: RgbImage,
    /// The whole LR image (this variant's) the patch was cut from, shared by its patches: what gives an
    /// expert context around the patch (`patch::crop_with_halo`).
    pub lr_image: std::sync::Arc<RgbImage>,
}
