//! How an expert's outputs are stored: the one place where storage settings are named and resolved.
//!
//! Three ways in meet here: `srcache cache` flags (`--lossless`, `--sr-u8`, `--feat-u8`, `--feat-pca`),
//! `cache.toml` fields (`dtype`, `codec`, `feat_dtype`, `feat_codec`, `feat_pca` per expert), and
//! `srcache bench fidelity --variant` names (`sr-u8+pca-16`). Flags and variant names are [`StoragePreset`]s,
//! applied to the TOML fields; [`ExpertConfig::storage`] then resolves the defaults once, and an invalid
//! combination is an error naming it, never silently rewritten into another codec.

use std::str::FromStr;

use srcache_formats::{Codec, DType};

use crate::config::ExpertConfig;
use crate::error::{CacheError, Result};
use crate::pca::PcaConfig;

/// One step of a storage preset, applied to an expert's storage fields in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoragePart {
    /// The cache's default storage: sr u8 as `residual_u8`, features f16 + `shuffle_zstd`.
    Default,
    /// Every output unrounded: sr and features f16 + `shuffle_zstd`, no PCA (`--lossless`).
    Lossless,
    /// sr as u8, stored losslessly as a residual over the bicubic of the LR patch (`--sr-u8`).
    SrU8,
    /// Features per-channel 8-bit + zstd, `affine_u8_zstd` (`--feat-u8`).
    FeatU8,
    /// Features per-channel 8-bit without zstd, `affine_u8` (bench only: to see what zstd adds).
    FeatU8Raw,
    /// Features as their leading PCA coefficients, per-channel 8-bit + zstd (`--feat-pca K|FRACTION`).
    FeatPca(PcaConfig),
}

impl StoragePart {
    /// `--feat-pca` / `pca-…` argument: a component count (`16`) or a variance fraction in (0, 1] (`0.999`).
    pub fn feat_pca(spec: &str) -> Result<StoragePart> {
        let mut p = PcaConfig::default();
        match (spec.parse::<usize>(), spec.parse::<f32>()) {
            (Ok(k), _) if k > 0 => p.k = k,
            (Err(_), Ok(f)) if f > 0.0 && f <= 1.0 => p.energy = f,
            _ => {
                return Err(CacheError::Config {
                    what: format!("feature PCA {spec:?}: give a component count (e.g. 16) or a variance fraction in (0, 1] (e.g. 0.999)"),
                })
            }
        }
        Ok(StoragePart::FeatPca(p))
    }

    fn apply(&self, e: &mut ExpertConfig) {
        match self {
            StoragePart::Default => {
                let d = ExpertConfig::builtin("", crate::Builtin::Bicubic);
                (e.dtype, e.codec, e.feat_dtype, e.feat_codec, e.feat_pca) = (d.dtype, d.codec, d.feat_dtype, d.feat_codec, d.feat_pca);
            }
            StoragePart::Lossless => {
                e.dtype = DType::F16;
                e.codec = Codec::SHUFFLE_ZSTD;
                e.feat_dtype = None;
                e.feat_codec = None;
                e.feat_pca = None;
            }
            StoragePart::SrU8 => {
                e.dtype = DType::U8;
                e.codec = Codec::RESIDUAL_U8;
                if e.feat_dtype.is_none() {
                    e.feat_dtype = Some(DType::F16);
                }
            }
            StoragePart::FeatU8 => e.feat_codec = Some(Codec::AFFINE_U8_ZSTD),
            StoragePart::FeatU8Raw => e.feat_codec = Some(Codec::AffineU8),
            StoragePart::FeatPca(p) => e.feat_pca = Some(p.clone()),
        }
    }
}

/// A storage setting for every expert of a cache: parts applied in order on top of each expert's own fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoragePreset(pub Vec<StoragePart>);

impl StoragePreset {
    /// The preset of the `srcache cache` flags, in the order they compose (empty: the config's own storage).
    pub fn from_flags(lossless: bool, sr_u8: bool, feat_u8: bool, feat_pca: Option<&str>) -> Result<StoragePreset> {
        let mut parts = Vec::new();
        if lossless {
            parts.push(StoragePart::Lossless);
        }
        if sr_u8 {
            parts.push(StoragePart::SrU8);
        }
        if feat_u8 {
            parts.push(StoragePart::FeatU8);
        }
        if let Some(spec) = feat_pca {
            parts.push(StoragePart::feat_pca(spec)?);
        }
        Ok(StoragePreset(parts))
    }

    pub fn apply(&self, e: &mut ExpertConfig) {
        self.0.iter().for_each(|p| p.apply(e));
    }
}

/// `srcache bench fidelity` names: `default`, or parts joined by `+` on top of `lossless` — `lossless`,
/// `sr-u8`, `feat-u8` (affine_u8_zstd, as `--feat-u8`), `feat-u8-raw` (affine_u8), `pca-K`, `pca-999`
/// (99.9% of the variance), `pca-99`.
impl FromStr for StoragePreset {
    type Err = CacheError;

    fn from_str(name: &str) -> Result<StoragePreset> {
        if name == "default" {
            return Ok(StoragePreset(vec![StoragePart::Default]));
        }
        let mut parts = vec![StoragePart::Lossless];
        for part in name.split('+') {
            parts.push(match part {
                "lossless" => continue,
                "sr-u8" => StoragePart::SrU8,
                "feat-u8" => StoragePart::FeatU8,
                "feat-u8-raw" => StoragePart::FeatU8Raw,
                "pca-999" => StoragePart::feat_pca("0.999")?,
                "pca-99" => StoragePart::feat_pca("0.99")?,
                p if p.starts_with("pca-") => StoragePart::feat_pca(&p[4..])?,
                other => {
                    return Err(CacheError::Config {
                        what: format!(
                            "storage {name:?}: unknown part {other:?} (default, or lossless, sr-u8, feat-u8, feat-u8-raw, pca-K, pca-999, pca-99 joined by +)"
                        ),
                    })
                }
            });
        }
        Ok(StoragePreset(parts))
    }
}

/// An expert's storage with every default resolved: what the shard schema records.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertStorage {
    pub sr_dtype: DType,
    pub sr_codec: Codec,
    pub feat_dtype: DType,
    /// The features' codec; with PCA, the coefficients'.
    pub feat_codec: Codec,
    pub feat_pca: Option<PcaConfig>,
}

impl ExpertConfig {
    /// Resolves this expert's storage: features default to f16 beside u8 sr (else the sr dtype), and to the
    /// sr codec unless that only makes sense for u8 images (then `shuffle_zstd`); PCA coefficients default to
    /// `affine_u8_zstd`. Combinations that cannot be stored as written are errors naming the fields.
    pub fn storage(&self) -> Result<ExpertStorage> {
        let bad = |what: String| Err(CacheError::Config { what: format!("expert {}: {what}", self.name) });
        if !self.dtype.is_float() && self.dtype != DType::U8 {
            return bad(format!("sr dtype {} not supported (f16, bf16, f32, u8)", self.dtype));
        }
        if self.codec.needs_base() && self.dtype != DType::U8 {
            return bad(format!("codec {} stores u8 SR as a residual over bicubic; set dtype = \"u8\"", self.codec));
        }
        if matches!(self.codec, Codec::AffineU8 | Codec::AffineU8Zstd { .. }) && self.dtype == DType::U8 {
            return bad(format!(
                "codec {} quantises floats to 8 bits, but sr is already u8: use residual_u8 (the default for u8) or zstd",
                self.codec
            ));
        }
        if self.feat_codec.is_some_and(|c| c.needs_base()) {
            return bad("feat_codec residual_u8 is for u8 SR images only".into());
        }
        if self.feat_dtype.is_some_and(|d| !d.is_float()) {
            return bad("feat dtype must be a float type".into());
        }
        let feat_dtype = self.feat_dtype.unwrap_or(if self.dtype == DType::U8 { DType::F16 } else { self.dtype });
        let feat_codec = match (&self.feat_pca, self.feat_codec) {
            (_, Some(c)) => c,
            // PCA coefficients are stored as per-channel 8-bit: the point of the compact setting.
            (Some(_), None) => Codec::AFFINE_U8_ZSTD,
            (None, None) if self.codec.needs_base() => Codec::SHUFFLE_ZSTD,
            (None, None) => self.codec,
        };
        Ok(ExpertStorage { sr_dtype: self.dtype, sr_codec: self.codec, feat_dtype, feat_codec, feat_pca: self.feat_pca.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(preset: &str) -> ExpertStorage {
        let mut e = ExpertConfig::builtin("e", crate::Builtin::Bicubic);
        preset.parse::<StoragePreset>().expect("preset").apply(&mut e);
        e.storage().expect("storage")
    }

    #[test]
    fn flags_and_bench_names_are_the_same_presets() {
        let flags = StoragePreset::from_flags(true, true, false, Some("16")).expect("flags");
        assert_eq!(flags, "sr-u8+pca-16".parse().expect("name"));
        assert_eq!(StoragePreset::from_flags(false, false, true, None).expect("flags").0, vec![StoragePart::FeatU8]);
        // feat-u8 means affine_u8_zstd everywhere (the bench used to call affine_u8 by that name).
        assert_eq!(resolved("feat-u8").feat_codec, Codec::AFFINE_U8_ZSTD);
        assert_eq!(resolved("feat-u8-raw").feat_codec, Codec::AffineU8);
    }

    #[test]
    fn defaults_resolve_once() {
        let d = resolved("default");
        assert_eq!((d.sr_dtype, d.sr_codec, d.feat_dtype, d.feat_codec), (DType::U8, Codec::RESIDUAL_U8, DType::F16, Codec::SHUFFLE_ZSTD));
        let l = resolved("lossless");
        assert_eq!((l.sr_dtype, l.sr_codec, l.feat_dtype, l.feat_codec), (DType::F16, Codec::SHUFFLE_ZSTD, DType::F16, Codec::SHUFFLE_ZSTD));
        let p = resolved("sr-u8+pca-999");
        assert_eq!((p.sr_codec, p.feat_codec), (Codec::RESIDUAL_U8, Codec::AFFINE_U8_ZSTD));
        assert_eq!(p.feat_pca.map(|c| c.energy), Some(0.999));
    }

    #[test]
    fn invalid_combinations_are_errors_not_rewrites() {
        let mut e = ExpertConfig::builtin("e", crate::Builtin::Bicubic);
        e.codec = Codec::AFFINE_U8_ZSTD; // on u8 sr: used to become zstd without a word
        let err = e.storage().expect_err("refused").to_string();
        assert!(err.contains("already u8"), "{err}");
        assert!("sr-u9".parse::<StoragePreset>().is_err());
        assert!(StoragePart::feat_pca("1.5").is_err() && StoragePart::feat_pca("0").is_err());
    }
}
