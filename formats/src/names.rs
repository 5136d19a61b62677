//! The data contract's vocabulary, typed: tensor names (`lr`, `hr`, `sr/<expert>`, `feat/<expert>`) and the
//! schema attributes every srcache dataset carries. Writers and readers build names here instead of spelling
//! strings, so the contract is defined once (FORMAT.md documents the spelling; the Python reader has its own,
//! checked by the round-trip test).

use std::fmt;
use std::str::FromStr;

use crate::{FormatError, PcaBasis, Schema};

/// A tensor of an SR sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorName {
    /// u8 [3, p, p]: the LR patch.
    Lr,
    /// u8 [3, s·p, s·p]: the HR patch.
    Hr,
    /// [3, s·p, s·p]: an expert's SR output.
    Sr(String),
    /// [C, h', w']: an expert's feature map.
    Feat(String),
}

impl TensorName {
    pub const SR_PREFIX: &'static str = "sr/";
    pub const FEAT_PREFIX: &'static str = "feat/";

    pub fn sr(expert: impl Into<String>) -> Self {
        TensorName::Sr(expert.into())
    }

    pub fn feat(expert: impl Into<String>) -> Self {
        TensorName::Feat(expert.into())
    }

    /// The expert an `sr/` or `feat/` tensor belongs to.
    pub fn expert(&self) -> Option<&str> {
        match self {
            TensorName::Sr(e) | TensorName::Feat(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorName::Lr => f.write_str("lr"),
            TensorName::Hr => f.write_str("hr"),
            TensorName::Sr(e) => write!(f, "{}{e}", Self::SR_PREFIX),
            TensorName::Feat(e) => write!(f, "{}{e}", Self::FEAT_PREFIX),
        }
    }
}

impl FromStr for TensorName {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let bad = || FormatError::InvalidInput { what: format!("{s:?} is not an SR tensor name (lr, hr, sr/<expert>, feat/<expert>)") };
        match s {
            "lr" => Ok(TensorName::Lr),
            "hr" => Ok(TensorName::Hr),
            _ => {
                if let Some(e) = s.strip_prefix(Self::SR_PREFIX).filter(|e| !e.is_empty() && !e.contains('/')) {
                    Ok(TensorName::Sr(e.to_string()))
                } else if let Some(e) = s.strip_prefix(Self::FEAT_PREFIX).filter(|e| !e.is_empty() && !e.contains('/')) {
                    Ok(TensorName::Feat(e.to_string()))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// Schema attribute keys (string values).
pub mod attr {
    /// Upscaling factor, e.g. "4".
    pub const SCALE: &str = "scale";
    /// LR patch side in pixels.
    pub const PATCH: &str = "patch";
    /// Comma-separated expert names, in cache-config order ("" for an ingest-only dataset).
    pub const EXPERTS: &str = "experts";
    /// LR pixels of context each side of a patch the experts saw (their outputs are the centre); absent = 0.
    pub const HALO: &str = "halo";
    const EXPERT_PREFIX: &str = "expert/";
    const PCA_SUFFIX: &str = "/pca";

    /// `expert/<name>`: the expert's source (`builtin:NAME` or a TorchScript path).
    pub fn expert_source(name: &str) -> String {
        format!("{EXPERT_PREFIX}{name}")
    }

    /// `feat/<expert>/pca`: the expert's [`crate::PcaBasis`] as JSON, when its features are stored as PCA
    /// coefficients.
    pub fn feat_pca(expert: &str) -> String {
        format!("{}{expert}{PCA_SUFFIX}", crate::TensorName::FEAT_PREFIX)
    }

    /// The expert of a `feat/<expert>/pca` key.
    pub fn pca_expert(key: &str) -> Option<&str> {
        key.strip_prefix(crate::TensorName::FEAT_PREFIX)?.strip_suffix(PCA_SUFFIX).filter(|e| !e.is_empty() && !e.contains('/'))
    }
}

impl Schema {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    pub fn scale(&self) -> Option<u32> {
        self.attr(attr::SCALE)?.parse().ok()
    }

    pub fn patch(&self) -> Option<u32> {
        self.attr(attr::PATCH)?.parse().ok()
    }

    /// The experts' LR context margin ([`attr::HALO`]); caches made before it was recorded read as 0.
    pub fn halo(&self) -> u32 {
        self.attr(attr::HALO).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Expert names in the order of the `experts` attr (cache-config order).
    pub fn experts(&self) -> Vec<String> {
        self.attr(attr::EXPERTS).map(|s| s.split(',').filter(|e| !e.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    }

    /// The source an expert was cached from (`expert/<name>` attr).
    pub fn expert_source(&self, name: &str) -> Option<&str> {
        self.attr(&attr::expert_source(name))
    }

    /// The PCA basis of an expert's features (`feat/<expert>/pca` attr): None when its features are stored
    /// as they are, an error when the attr does not parse or validate.
    pub fn pca(&self, expert: &str) -> Option<crate::Result<PcaBasis>> {
        self.attr(&attr::feat_pca(expert)).map(PcaBasis::from_json)
    }

    /// Stores (replaces) an expert's PCA basis in the attrs, validated first.
    pub fn set_pca(&mut self, expert: &str, basis: &PcaBasis) -> crate::Result<()> {
        basis.validate()?;
        self.attrs.insert(attr::feat_pca(expert), basis.to_json());
        Ok(())
    }

    /// Position of a typed tensor.
    pub fn position(&self, name: &TensorName) -> Option<usize> {
        self.index_of(&name.to_string())
    }

    /// Experts with an `sr/` tensor, sorted by name: the order the fusion model takes them in.
    pub fn sr_experts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .iter()
            .filter_map(|t| match t.name.parse::<TensorName>() {
                Ok(TensorName::Sr(e)) => Some(e),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The upscaling factor the shapes say: hr side / lr side, when both exist and divide (None otherwise).
    /// What a consumer should trust over the `scale` attr (which [`Schema::check_sr_layout`] checks against it).
    pub fn sr_scale(&self) -> Option<u32> {
        let side = |name: &str| self.tensors.iter().find(|t| t.name == name).and_then(|t| t.shape.get(1).copied());
        let (p, hp) = (side("lr")?, side("hr")?);
        (p > 0 && hp >= p && hp % p == 0).then(|| u32::try_from(hp / p).ok()).flatten()
    }

    /// Checks the SR layout of a schema that uses the SR names: `lr` [3,p,p] u8, `hr` [3,s·p,s·p] u8 with s ≥ 1,
    /// every `sr/<e>` [3,s·p,s·p], every `feat/<e>` [C,h',w'] (C, h' ≥ 1) with the LR patch's aspect and whole
    /// pixels per LR pixel (or a whole fraction), no malformed `sr/…` or `feat/…` name (`sr/a/b`, `sr/`), and
    /// `scale`/`patch` attrs that are numbers agreeing with the shapes. A schema without `lr` and `hr` is not an
    /// SR dataset and passes (generic shards are allowed by the container), as long as it uses no SR-looking
    /// name wrongly. Every `feat/<e>/pca` attr must be a valid [`PcaBasis`] for an existing `feat/<e>` [k, h', w']
    /// of a float dtype, k being the basis' coefficient count — checked whether or not the schema is an SR one.
    pub fn check_sr_layout(&self) -> Result<(), String> {
        for key in self.attrs.keys() {
            let Some(e) = attr::pca_expert(key) else { continue };
            let basis = match self.pca(e) {
                Some(Ok(b)) => b,
                Some(Err(why)) => return Err(format!("attr {key}: {why}")),
                None => continue,
            };
            let name = TensorName::feat(e).to_string();
            let t = self.tensors.iter().find(|t| t.name == name).ok_or_else(|| format!("attr {key} but the schema has no tensor {name}"))?;
            if !t.dtype.is_float() {
                return Err(format!("{name} holds PCA coefficients but has dtype {}, not a float", t.dtype));
            }
            if t.shape.len() != 3 || t.shape[0] != basis.k {
                return Err(format!("{name} has shape {:?} but its PCA basis has k = {} coefficient channels ([k, h, w])", t.shape, basis.k));
            }
        }
        for t in &self.tensors {
            let sr_like = t.name.starts_with(TensorName::SR_PREFIX) || t.name.starts_with(TensorName::FEAT_PREFIX);
            if sr_like && t.name.parse::<TensorName>().is_err() {
                return Err(format!("tensor name {:?} is not sr/<expert> or feat/<expert> (an expert name has no '/')", t.name));
            }
        }
        for key in [attr::SCALE, attr::PATCH] {
            if let Some(v) = self.attr(key).filter(|v| v.parse::<u32>().is_err()) {
                return Err(format!("attr {key} = {v:?} is not a whole number"));
            }
        }
        let Some(lr) = self.tensors.iter().find(|t| t.name == "lr") else { return Ok(()) };
        let [c, p, pw] = lr.shape[..] else { return Err(format!("lr has shape {:?}, expected [3, p, p]", lr.shape)) };
        if c != 3 || p != pw || p == 0 {
            return Err(format!("lr has shape {:?}, expected [3, p, p]", lr.shape));
        }
        if lr.dtype != crate::DType::U8 {
            return Err(format!("lr has dtype {}, expected u8", lr.dtype));
        }
        if let Some(a) = self.patch() {
            if a as usize != p {
                return Err(format!("attr patch = {a} but lr is {p}x{p}"));
            }
        }
        let Some(hr) = self.tensors.iter().find(|t| t.name == "hr") else { return Ok(()) };
        let [3, hp, hpw] = hr.shape[..] else { return Err(format!("hr has shape {:?}, expected [3, s·p, s·p]", hr.shape)) };
        if hp != hpw || hp < p || hp % p != 0 {
            return Err(format!("hr has shape {:?}: not a whole multiple (s ≥ 1) of lr {p}x{p}", hr.shape));
        }
        if hr.dtype != crate::DType::U8 {
            return Err(format!("hr has dtype {}, expected u8", hr.dtype));
        }
        let s = hp / p;
        if let Some(a) = self.scale() {
            if a as usize != s {
                return Err(format!("attr scale = {a} but hr/lr = {s}"));
            }
        }
        for t in &self.tensors {
            match t.name.parse::<TensorName>() {
                Ok(TensorName::Sr(_)) if t.shape != [3, hp, hp] => {
                    return Err(format!("{} has shape {:?}, expected [3, {hp}, {hp}]", t.name, t.shape));
                }
                Ok(TensorName::Feat(_)) => {
                    let [fc, fh, fw] = t.shape[..] else { return Err(format!("{} has shape {:?}, expected [C, h, w]", t.name, t.shape)) };
                    let whole = fh > 0 && (fh % p == 0 || p % fh == 0);
                    if fc == 0 || fh != fw || !whole {
                        return Err(format!("{} has shape {:?}: not C ≥ 1 channels, square, with a whole ratio to lr {p}x{p}", t.name, t.shape));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [TensorName::Lr, TensorName::Hr, TensorName::sr("hat"), TensorName::feat("rrdb")] {
            assert_eq!(n.to_string().parse::<TensorName>().ok(), Some(n));
        }
        for bad in ["", "sr/", "feat/", "sr/a/b", "x"] {
            assert!(bad.parse::<TensorName>().is_err(), "{bad}");
        }
    }
}
