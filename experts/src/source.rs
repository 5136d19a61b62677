//! Where an expert comes from: a built-in analytic upscaler (`builtin:NAME`) or a TorchScript file. One
//! parser for the spelling every config, flag and schema attribute uses.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ExpertError;

/// Analytic experts available without a file. Their error profiles differ on purpose (smooth, ringing,
/// over-sharpened) so that a fusion network has something to learn even in the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// PyTorch bicubic (a = -0.75), align_corners = false.
    Bicubic,
    /// Separable Lanczos-3, edge-replicated borders.
    Lanczos3,
    /// Bicubic followed by an unsharp mask (gaussian σ = 1, amount 0.6).
    SharpBicubic,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Builtin::Bicubic, Builtin::Lanczos3, Builtin::SharpBicubic];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Bicubic => "bicubic",
            Builtin::Lanczos3 => "lanczos3",
            Builtin::SharpBicubic => "sharp_bicubic",
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Builtin {
    type Err = ExpertError;
    fn from_str(s: &str) -> Result<Self, ExpertError> {
        Builtin::ALL.into_iter().find(|b| b.as_str() == s).ok_or_else(|| ExpertError::UnknownBuiltin { name: s.to_string() })
    }
}

/// Where an expert comes from. Spelled `builtin:NAME` or a path to a TorchScript file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExpertSource {
    Builtin(Builtin),
    TorchScript(PathBuf),
}

impl ExpertSource {
    pub const BUILTIN_PREFIX: &'static str = "builtin:";
}

impl fmt::Display for ExpertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpertSource::Builtin(b) => write!(f, "{}{b}", Self::BUILTIN_PREFIX),
            ExpertSource::TorchScript(p) => write!(f, "{}", p.display()),
        }
    }
}

impl FromStr for ExpertSource {
    type Err = ExpertError;
    fn from_str(s: &str) -> Result<Self, ExpertError> {
        if s.is_empty() {
            return Err(ExpertError::Spec { spec: s.into(), why: "empty expert source (builtin:NAME or a .pt file)".into() });
        }
        Ok(match s.strip_prefix(Self::BUILTIN_PREFIX) {
            Some(kind) => ExpertSource::Builtin(kind.parse()?),
            None => ExpertSource::TorchScript(PathBuf::from(s)),
        })
    }
}

/// A named expert as given on a command line: `NAME=SOURCE`, optionally `NAME=SOURCE@DEVICE` (expert split).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertSpec {
    pub name: String,
    pub source: ExpertSource,
    pub device: Option<String>,
}

impl FromStr for ExpertSpec {
    type Err = ExpertError;
    fn from_str(s: &str) -> Result<Self, ExpertError> {
        let bad = |why: &str| ExpertError::Spec { spec: s.into(), why: why.into() };
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("expected NAME=builtin:KIND or NAME=FILE.pt[@DEVICE]"))?;
        check_name(name).map_err(|why| bad(&why))?;
        // A device suffix is only split off when it looks like one, so paths containing '@' still work.
        let (src, device) = match rest.rsplit_once('@') {
            Some((a, d)) if crate::device::parse_devices(d).is_ok() || d.starts_with("cuda") || d.starts_with("cpu") => (a, Some(d.to_string())),
            _ => (rest, None),
        };
        Ok(ExpertSpec { name: name.to_string(), source: src.parse()?, device })
    }
}

/// The sources of `names` from a cached dataset's schema attrs (`expert/<name>`). A relative TorchScript
/// path that does not exist from the working directory is looked up next to the dataset, then its parent.
pub fn sources_from_dataset(ds: &srcache_formats::Dataset, names: &[String]) -> Result<Vec<(String, ExpertSource)>, ExpertError> {
    let bad = |what: String| ExpertError::File { path: ds.dir().to_path_buf(), what };
    let schema = ds.schema().ok_or_else(|| bad("dataset has no shards".into()))?;
    names
        .iter()
        .map(|name| {
            let src = schema
                .expert_source(name)
                .ok_or_else(|| bad(format!("schema has no expert/{name} attribute: the experts' sources are recorded by `srcache cache`")))?;
            let source = match src.parse::<ExpertSource>()? {
                ExpertSource::TorchScript(p) => ExpertSource::TorchScript(resolve(&p, ds.dir())),
                b => b,
            };
            Ok((name.clone(), source))
        })
        .collect()
}

fn resolve(p: &std::path::Path, data_dir: &std::path::Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    [Some(data_dir), data_dir.parent()].into_iter().flatten().map(|d| d.join(p)).find(|c| c.exists()).unwrap_or_else(|| p.to_path_buf())
}

/// Expert names become tensor names (`sr/<name>`) and Parquet columns (`psnr/<name>`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.contains(',') || name.chars().any(char::is_whitespace) {
        return Err(format!("expert name {name:?} must be non-empty, without '/', ',' or spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in ["builtin:bicubic", "builtin:lanczos3", "builtin:sharp_bicubic", "experts/hat.pt"] {
            let src: ExpertSource = s.parse().expect(s);
            assert_eq!(src.to_string(), s);
        }
        assert!("builtin:nope".parse::<ExpertSource>().is_err());
        let e: ExpertSpec = "hat=models/hat.pt@cpu".parse().expect("spec");
        assert_eq!((e.name.as_str(), e.device.as_deref()), ("hat", Some("cpu")));
        let e: ExpertSpec = "b=builtin:bicubic".parse().expect("spec");
        assert_eq!(e.source, ExpertSource::Builtin(Builtin::Bicubic));
        assert!("noequals".parse::<ExpertSpec>().is_err());
        assert!("a/b=builtin:bicubic".parse::<ExpertSpec>().is_err());
    }
}
