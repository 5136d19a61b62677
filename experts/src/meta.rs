//! What an exported expert says about itself (written by `python -m srcache.export`), read from the file
//! without running or even loading the model: both formats are zip archives, a TorchScript module with an
//! `extra/srcache.json`, an AOTInductor package with a `srcache` key in its metadata JSON.
//!
//! cache, eval and infer use it to pick the sizes an expert runs at and to refuse one it cannot take before any
//! work, naming the sizes that work and the export command that fixes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ExpertError;

/// How a model file is run, picked by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// `.pt2`: an AOTInductor package (torch.export, dynamic shapes).
    Pt2,
    /// Anything else (`.pt`, `.ts`, ...): a TorchScript module.
    TorchScript,
}

impl ModelFormat {
    pub fn of(path: &Path) -> ModelFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("pt2") => ModelFormat::Pt2,
            _ => ModelFormat::TorchScript,
        }
    }
}

/// The exporter's metadata (the JSON it writes; every field it may lack is optional).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExpertMeta {
    #[serde(default)]
    pub version: u32,
    /// "pt2" or "torchscript".
    pub format: String,
    #[serde(default)]
    pub arch: String,
    pub scale: u32,
    /// The module whose output is the feature map; empty for an sr-only expert.
    #[serde(default)]
    pub feat_layer: String,
    #[serde(default)]
    pub feat_channels: u32,
    /// The LR multiple the architecture needs (padded to inside the exported graph).
    #[serde(default = "one")]
    pub input_multiple: u32,
    /// The smallest LR side accepted.
    #[serde(default)]
    pub min_size: u32,
    /// pt2: the largest LR side accepted.
    #[serde(default)]
    pub max_size: Option<u32>,
    /// TorchScript: the LR side it was traced at.
    #[serde(default)]
    pub traced_size: Option<u32>,
    /// "any" (any size in [min_size, max_size]) or "traced" (only traced_size x traced_size).
    #[serde(default)]
    pub sizes: String,
    /// pt2: the device type it was compiled for ("cpu", "cuda").
    #[serde(default)]
    pub device: Option<String>,
    /// pt2: the dtype the model computes in ("fp32", "fp16", "bf16"; absent: fp32). Inputs and outputs are f32
    /// whatever it is (the package casts inside its graph); a compiled package ignores autocast.
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub checkpoint: Option<String>,
    #[serde(default)]
    pub checkpoint_sha256: Option<String>,
}

fn one() -> u32 {
    1
}

impl ExpertMeta {
    /// The dtype the model computes in: "fp32" unless the package says otherwise.
    pub fn compute_dtype(&self) -> &str {
        self.dtype.as_deref().unwrap_or("fp32")
    }

    /// Whether a TorchScript trace only runs at its traced size.
    pub fn traced_only(&self) -> bool {
        self.sizes == "traced" && self.traced_size.is_some()
    }

    /// Whether the expert takes an `h`×`w` LR input.
    pub fn accepts(&self, h: usize, w: usize) -> bool {
        if let (true, Some(t)) = (self.traced_only(), self.traced_size) {
            return h == t as usize && w == t as usize;
        }
        let max = self.max_size.map(|m| m as usize).unwrap_or(usize::MAX);
        let min = self.min_size as usize;
        (min..=max).contains(&h) && (min..=max).contains(&w)
    }

    /// The sizes that work, in words.
    pub fn sizes_text(&self) -> String {
        if let (true, Some(t)) = (self.traced_only(), self.traced_size) {
            return format!("only {t}x{t} inputs (a TorchScript trace of a {} keeps its traced size)", self.arch_name());
        }
        match self.max_size {
            Some(m) => format!("any input from {0}x{0} to {m}x{m}", self.min_size.max(1)),
            None => format!("any input of at least {0}x{0}", self.min_size.max(1)),
        }
    }

    /// A side the expert is known to accept (its traced size when only that works).
    pub fn known_size(&self) -> Option<usize> {
        self.traced_only().then_some(self.traced_size).flatten().map(|t| t as usize)
    }

    /// The command that re-exports `path` as a package that takes any size.
    pub fn export_command(&self, path: &Path) -> String {
        let ckpt = self.checkpoint.clone().unwrap_or_else(|| "CHECKPOINT".into());
        let out: PathBuf = path.with_extension("pt2");
        format!("python -m srcache.export --checkpoint {ckpt} --out {}", out.display())
    }

    fn arch_name(&self) -> &str {
        if self.arch.is_empty() {
            "model"
        } else {
            &self.arch
        }
    }
}

/// The srcache metadata of a model file, or None when it has none (exported by something else, or by an
/// older exporter): such a file is probed as before. A file that is not a readable archive also gives None
/// here; loading it reports the real problem.
pub fn read_meta(path: &Path) -> Result<Option<ExpertMeta>, ExpertError> {
    let Ok(file) = std::fs::File::open(path) else { return Ok(None) };
    let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return Ok(None) };
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let bad = |what: String| ExpertError::File { path: path.to_path_buf(), what };
    let mut read = |name: &str| -> Result<String, ExpertError> {
        let mut f = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let mut s = String::new();
        f.read_to_string(&mut s).map_err(|e| bad(format!("{name}: {e}")))?;
        Ok(s)
    };
    if let Some(n) = names.iter().find(|n| n.ends_with("/extra/srcache.json")) {
        let text = read(n)?;
        return serde_json::from_str(&text).map(Some).map_err(|e| bad(format!("{n}: bad srcache metadata: {e}")));
    }
    for n in names.iter().filter(|n| n.contains("/data/aotinductor/") && n.ends_with("_metadata.json")) {
        let text = read(n)?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| bad(format!("{n}: bad package metadata: {e}")))?;
        if let Some(inner) = map.get("srcache").and_then(|v| v.as_str()) {
            return serde_json::from_str(inner).map(Some).map_err(|e| bad(format!("{n}: bad srcache metadata: {e}")));
        }
    }
    Ok(None)
}
