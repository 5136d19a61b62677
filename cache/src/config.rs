//! The run configuration (`cache.toml`): what to read, which experts, how to store their outputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use srcache_formats::{Codec, DType};
use srcache_ingest::Part;

use crate::error::{CacheError, Result};
use srcache_experts::{Builtin, ExpertSource};

/// File name of the config saved next to the shards; a rerun must match it.
pub const CONFIG_FILE: &str = "cache.toml";
/// Written after the manifest: its presence makes a rerun a no-op.
pub const DONE_FILE: &str = "cache.done.json";
/// Held (flock) by the process writing a cache directory, so two processes never write one dataset or part.
pub const LOCK_FILE: &str = "cache.lock";
/// The input files a cache was made from (relative path, size, content fingerprint): a resume must see the same.
pub const INPUTS_FILE: &str = "inputs.json";
/// Where `--part K/N` writes inside the output directory.
pub const PARTS_DIR: &str = "parts";
/// The PCA bases of the experts with `feat_pca`, at the output root (shared by the parts of a cache).
pub const PCA_FILE: &str = "feat-pca.json";
/// Default LR context margin of the experts' inputs ([`InputConfig::halo`]).
pub const DEFAULT_HALO: u32 = 8;
/// Largest halo a run accepts (LR pixels each side).
pub const MAX_HALO: u32 = 256;
/// Largest batch a run accepts (samples per expert forward).
pub const MAX_BATCH: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    pub hr_dir: PathBuf,
    /// Paired LR images; None = MATLAB bicubic downscale of HR.
    pub lr_dir: Option<PathBuf>,
    pub scale: u32,
    /// LR patch side in pixels (default 64, `srcache_ingest::DEFAULT_PATCH`).
    pub patch: u32,
    /// Distance between patch origins in LR pixels; absent = the patch size (no overlap, no gaps). Resolved
    /// by `srcache_ingest::PatchConfig::stride`, the one place that knows this default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stride: Option<u32>,
    /// LR pixels of context each side of a patch that the experts see (they run on the patch plus this
    /// margin, cut from the whole LR image, and their outputs are the patch's centre), so cached outputs match
    /// whole-image inference instead of carrying the border artefacts of a bare patch. Recorded in the schema
    /// (`halo` attr). Default [`DEFAULT_HALO`], chosen by measurement (BENCHMARKS.md, "Halo").
    pub halo: u32,
    /// Drop patches whose LR standard deviation is below this (0..255 scale).
    pub flat_threshold: Option<f32>,
    /// Degradation variants in order (ingest preset names); empty = the clean bicubic pair only.
    pub variants: Vec<String>,
    pub seed: u64,
    /// Decode workers (0 = automatic). Does not change the output.
    pub workers: usize,
    /// Stop after this many samples (for demos and benchmarks).
    pub limit: Option<u64>,
    /// Only part K of N of the input (contiguous by sorted file name, balanced by pixel count), written to
    /// `<out>/parts/K-of-N/`; `srcache merge <out>` joins the parts. None = the whole input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

impl InputConfig {
    /// The patch grid of this input, in ingest's terms (where the stride default is resolved).
    pub fn patch_config(&self) -> srcache_ingest::PatchConfig {
        srcache_ingest::PatchConfig { size: self.patch, stride: self.stride, flat_threshold: self.flat_threshold }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            hr_dir: PathBuf::from("data/hr"),
            lr_dir: None,
            scale: 4,
            patch: srcache_ingest::DEFAULT_PATCH,
            stride: None,
            halo: DEFAULT_HALO,
            flat_threshold: None,
            variants: Vec::new(),
            seed: 0,
            workers: 0,
            limit: None,
            part: None,
        }
    }
}

/// One expert and how its outputs are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Outputs to store: "sr" and/or "feat". PSNR is computed whatever is kept.
    #[serde(default = "default_keep")]
    pub keep: Vec<String>,
    /// Storage dtype of sr (and of feat unless feat_dtype is set; u8 sr keeps f16 features). Default: u8 with
    /// the `residual_u8` codec, i.e. the SR image exactly as every metric sees it (rounded to 8 bits), stored
    /// losslessly as its residual over a bicubic of the LR patch. `f16` + `shuffle_zstd` keeps the unrounded
    /// output (`srcache cache --lossless`). Why u8 is the default: README, "Storage".
    #[serde(default = "default_dtype")]
    pub dtype: DType,
    #[serde(default = "default_codec")]
    pub codec: Codec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feat_dtype: Option<DType>,
    /// e.g. `{ kind = "affine_u8" }` for lossy 8-bit features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feat_codec: Option<Codec>,
    /// Expert-split placement: the device this expert is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Store features as their leading PCA coefficients (e.g. `{ k = 16 }` or `{ energy = 0.999 }`); their codec
    /// then defaults to per-channel 8-bit + zstd (`affine_u8_zstd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feat_pca: Option<PcaConfig>,
}

/// How an expert's features are reduced (`feat_pca = { k = 16 }` or `{ energy = 0.999 }` in the cache config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcaConfig {
    /// Keep this many components (0 = the fewest that reach `energy`).
    pub k: usize,
    /// Fraction of the feature variance the kept components must explain when `k` is 0.
    pub energy: f32,
    /// Input images sampled (seeded) for the fit, and patches taken from each.
    pub images: usize,
    pub patches_per_image: usize,
    /// Feature pixels used per patch (evenly spaced).
    pub pixels_per_patch: usize,
    pub seed: u64,
}

impl Default for PcaConfig {
    fn default() -> Self {
        PcaConfig { k: 0, energy: 0.999, images: 8, patches_per_image: 16, pixels_per_patch: 256, seed: 0 }
    }
}

fn default_keep() -> Vec<String> {
    vec!["sr".into(), "feat".into()]
}
fn default_dtype() -> DType {
    DType::U8
}
fn default_codec() -> Codec {
    Codec::RESIDUAL_U8
}

impl ExpertConfig {
    pub fn builtin(name: &str, which: Builtin) -> Self {
        ExpertConfig {
            name: name.into(),
            builtin: Some(which),
            path: None,
            keep: default_keep(),
            dtype: default_dtype(),
            codec: default_codec(),
            feat_dtype: None,
            feat_codec: None,
            device: None,
            feat_pca: None,
        }
    }

    pub fn torchscript(name: &str, path: impl Into<PathBuf>) -> Self {
        ExpertConfig { builtin: None, path: Some(path.into()), ..ExpertConfig::builtin(name, Builtin::Bicubic) }
    }

    pub fn source(&self) -> Result<ExpertSource> {
        match (&self.builtin, &self.path) {
            (Some(b), None) => Ok(ExpertSource::Builtin(*b)),
            (None, Some(p)) => Ok(ExpertSource::TorchScript(p.clone())),
            _ => Err(CacheError::Config { what: format!("expert {:?}: give exactly one of `builtin` or `path`", self.name) }),
        }
    }

    pub fn keeps(&self, what: &str) -> bool {
        self.keep.iter().any(|k| k == what)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Every device runs every expert on its share of the batches.
    #[default]
    DataParallel,
    /// Each expert runs on its `device` only; every batch visits every device.
    ExpertSplit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub input: InputConfig,
    pub experts: Vec<ExpertConfig>,
    /// Output directory: shards, manifest.parquet, cache.toml.
    pub out: PathBuf,
    /// `cpu`, `cpu:N`, `cuda:0,cuda:1`.
    pub devices: String,
    pub placement: Placement,
    pub batch: usize,
    /// fp16 autocast on CUDA devices (ignored on CPU).
    pub fp16: bool,
    /// Codec of the u8 lr/hr tensors.
    pub image_codec: Codec,
    /// A shard is closed once its payloads reach this many bytes.
    pub target_shard_bytes: u64,
    /// Compression threads (0 = automatic).
    pub compress_workers: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            input: InputConfig::default(),
            experts: vec![ExpertConfig::builtin("bicubic", Builtin::Bicubic)],
            out: PathBuf::from("cache"),
            devices: "cpu".into(),
            placement: Placement::DataParallel,
            batch: 16,
            fp16: false,
            image_codec: Codec::ZSTD,
            target_shard_bytes: 2 << 30,
            compress_workers: 0,
        }
    }
}

impl CacheConfig {
    pub fn from_toml_file(path: &Path) -> Result<CacheConfig> {
        let text = srcache_formats::read_regular_to_string(path).map_err(|source| CacheError::Io { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| CacheError::ConfigFile { path: path.to_path_buf(), what: srcache_experts::toml_error(&text, &e) })
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| CacheError::Config { what: format!("serialise config: {e}") })
    }

    /// Static checks, before anything is loaded.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(CacheError::Config { what });
        if self.experts.is_empty() {
            return bad("no experts configured".into());
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        if self.target_shard_bytes == 0 {
            return bad("target_shard_bytes must be positive".into());
        }
        // Upper bounds too: a batch or a thread count of 10^6 is a typo, and would end in an allocation failure
        // or thread-spawn abort instead of a sentence.
        if self.batch > MAX_BATCH {
            return bad(format!("batch {} is outside 1..={MAX_BATCH}", self.batch));
        }
        if self.compress_workers > srcache_ingest::MAX_WORKERS {
            return bad(format!("compress_workers {} is outside 0..={} (0 = automatic)", self.compress_workers, srcache_ingest::MAX_WORKERS));
        }
        if self.input.limit == Some(0) {
            return bad("limit 0: nothing to do (give a limit of at least 1 sample, or none for the whole input)".into());
        }
        if self.input.patch == 0 || self.input.stride == Some(0) {
            return bad("patch and stride must be positive".into());
        }
        if self.input.halo > MAX_HALO {
            return bad(format!("halo {} is outside 0..={MAX_HALO} (LR pixels of context each side of a patch)", self.input.halo));
        }
        for (i, e) in self.experts.iter().enumerate() {
            e.source()?;
            if let Err(why) = srcache_experts::check_name(&e.name) {
                return bad(format!("expert #{i}: {why}"));
            }
            if self.experts[..i].iter().any(|o| o.name == e.name) {
                return bad(format!("duplicate expert name {:?}", e.name));
            }
            if let Some(k) = e.keep.iter().find(|k| *k != "sr" && *k != "feat") {
                return bad(format!("expert {}: keep entry {k:?} is not \"sr\" or \"feat\"", e.name));
            }
            e.storage()?;
            if self.placement == Placement::ExpertSplit && e.device.is_none() {
                return bad(format!("expert {}: placement = expert_split needs a `device` per expert", e.name));
            }
        }
        Ok(())
    }

    /// The dataset directory this run writes: `out`, or `out/parts/K-of-N` for a part.
    pub fn dataset_dir(&self) -> PathBuf {
        match self.input.part {
            Some(p) => self.out.join(PARTS_DIR).join(p.dir_name()),
            None => self.out.clone(),
        }
    }

    /// The part of the config that determines the cache's content: runtime knobs (devices, batch, workers,
    /// placement) may change between a crash and its resume, content-defining ones may not.
    pub fn content(&self) -> CacheConfig {
        let mut c = self.clone();
        c.devices = String::new();
        c.placement = Placement::default();
        c.batch = 0;
        c.compress_workers = 0;
        c.input.workers = 0;
        // `stride` absent and `stride = patch` make the same cache.
        c.input.stride = Some(self.input.patch_config().stride());
        c.out = PathBuf::new();
        for e in &mut c.experts {
            e.device = None;
        }
        c
    }
}
