//! srcache-formats: the data contract between srcache's stages.
//!
//! A *shard* (`*.srs`) is one file holding many samples; a sample is a fixed set of named tensors (the
//! shard's [`Schema`]) plus [`SampleMeta`]. Shards are memory-mapped; any tensor of any sample is reached in
//! O(1) through a fixed-size index, raw tensors are zero-copy slices of the map, every payload carries an
//! xxh3-64 checksum. A *dataset* is a directory of shards plus a Parquet manifest. The byte layout is
//! specified in `formats/FORMAT.md`; `python/srcache/reader.py` is an independent reader of it.
//!
//! This crate deliberately does not depend on tch: conversion to tensors happens in the crates that use tch.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod atomic;
mod codec;
mod dataset;
mod diff;
mod error;
pub mod export;
mod files;
mod layout;
mod manifest;
mod names;
pub mod owned;
pub mod pca;
pub mod regular;
pub mod residual;
mod shard;
pub mod sigbus;
mod verify;

pub use atomic::{write_atomic, AtomicFile};
pub use codec::{decode_payload, decode_payload_with_base, encode, encode_owned, encode_with_base, EncodedTensor};
pub use dataset::{Dataset, DatasetOptions, DatasetSummary, DatasetWriter, Resume};
pub use diff::diff_datasets;
pub use error::{error_chain, CodecError, FormatError, Problem, Result};
pub use files::{list_shards, shard_file_name, MANIFEST_FILE, PARTS_DIR};
pub use layout::DatasetLayout;
pub use manifest::{write_parquet, Manifest, ManifestRow, PARTS_KEY, SKIPPED_KEY};
pub use names::{attr, TensorName};
pub use owned::{DirState, Lock, OwnedDir, OwnedError, Ownership};
pub use pca::PcaBasis;
pub use regular::{open_regular, read_regular, read_regular_to_string};
pub use residual::ResidualBase;
pub use shard::{Shard, ShardSummary, ShardWriter, TensorView, FORMAT_VERSION, MAGIC, MAGIC_END};
pub use verify::{verify_dataset, VerifyReport};

/// Element type of a tensor as stored (little-endian). bf16 is carried as its u16 bit pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    U8,
    U16,
    F16,
    BF16,
    F32,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::U8, DType::U16, DType::F16, DType::BF16, DType::F32];

    pub fn size_of(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| FormatError::InvalidInput { what: format!("unknown dtype {s:?} (u8, u16, f16, bf16, f32)") })
    }
}

/// How one tensor's bytes are stored. Every codec decodes back to the tensor's logical dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Codec {
    /// Stored verbatim, 64-byte aligned: readable zero-copy from the map.
    Raw,
    /// zstd of the little-endian bytes.
    Zstd { level: i32 },
    /// Bytes split into planes (all byte 0s, then all byte 1s, ...) then zstd. Lossless; what makes float
    /// tensors compress, because the high (sign/exponent) plane of a smooth image is highly repetitive.
    ShuffleZstd { level: i32 },
    /// LOSSY: dim 0 is the channel; per channel `value = offset + scale * q` with f32 scale/offset and u8 q.
    /// Float dtypes only. Error per element is at most `scale / 2` (+ the dtype's own rounding).
    AffineU8,
    /// LOSSY: the [`Codec::AffineU8`] payload (per-channel scale/offset, then the u8 q) as one zstd frame.
    /// Decodes exactly like AffineU8 (bit-identical values); the q of smooth feature maps are repetitive, so
    /// this is 1.6-3.9x smaller than AffineU8 on the tests' photo-derived feature maps.
    AffineU8Zstd { level: i32 },
    /// LOSSLESS, u8 `sr/<expert>` [3, s·h, s·w] only, in a schema with `lr` u8 [3, h, w]: zstd of
    /// `(sr − B(lr)) mod 256`, where B is the integer bicubic upscale of FORMAT.md ([`residual::bicubic_u8`]).
    /// Decoding needs the same sample's `lr`, which [`TensorView`] reads transparently.
    ResidualU8 { level: i32 },
}

impl Codec {
    /// Fast defaults: level 1 keeps encode well above 100 MB/s/core and costs little ratio on image data.
    pub const ZSTD: Codec = Codec::Zstd { level: 1 };
    pub const SHUFFLE_ZSTD: Codec = Codec::ShuffleZstd { level: 1 };
    pub const AFFINE_U8_ZSTD: Codec = Codec::AffineU8Zstd { level: 1 };
    pub const RESIDUAL_U8: Codec = Codec::ResidualU8 { level: 1 };

    pub fn is_lossy(self) -> bool {
        matches!(self, Codec::AffineU8 | Codec::AffineU8Zstd { .. })
    }

    /// Whether decoding needs the same sample's decoded `lr` (the base of a residual).
    pub fn needs_base(self) -> bool {
        matches!(self, Codec::ResidualU8 { .. })
    }

    /// The zstd level, for the codecs that compress with zstd.
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Codec::Zstd { level } | Codec::ShuffleZstd { level } | Codec::AffineU8Zstd { level } | Codec::ResidualU8 { level } => Some(level),
            Codec::Raw | Codec::AffineU8 => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd { .. } => "zstd",
            Codec::ShuffleZstd { .. } => "shuffle_zstd",
            Codec::AffineU8 => "affine_u8",
            Codec::AffineU8Zstd { .. } => "affine_u8_zstd",
            Codec::ResidualU8 { .. } => "residual_u8",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.zstd_level() {
            Some(level) => write!(f, "{}({level})", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// One named tensor of every sample in a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub codec: Codec,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[usize], codec: Codec) -> Self {
        TensorSpec { name: name.into(), dtype, shape: shape.to_vec(), codec }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Logical (decoded) byte length; None on overflow (only reachable from a hostile schema).
    pub fn raw_len(&self) -> Option<usize> {
        self.shape.iter().try_fold(self.dtype.size_of(), |acc, &d| acc.checked_mul(d))
    }

    /// Channel count for AffineU8 / AffineU8Zstd: dim 0, or 1 for a scalar.
    pub fn channels(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// Self-description of a shard: its tensors in storage order, plus free-form attributes (e.g. "scale").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Schema {
    pub tensors: Vec<TensorSpec>,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

impl Schema {
    pub fn new(tensors: Vec<TensorSpec>) -> Self {
        Schema { tensors, attrs: BTreeMap::new() }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Rejects schemas a reader could not serve: duplicate names, empty schema, AffineU8(Zstd) on integers,
    /// overflowing shapes, out-of-range zstd levels, a ResidualU8 tensor without its `lr` base
    /// ([`Schema::residual_base`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(FormatError::InvalidInput { what });
        if self.tensors.is_empty() {
            return bad("schema has no tensors".into());
        }
        for (i, t) in self.tensors.iter().enumerate() {
            if t.name.is_empty() {
                return bad(format!("tensor #{i} has an empty name"));
            }
            if self.tensors[..i].iter().any(|o| o.name == t.name) {
                return bad(format!("duplicate tensor name {:?}", t.name));
            }
            if t.raw_len().is_none() {
                return bad(format!("tensor {:?}: shape {:?} overflows", t.name, t.shape));
            }
            match t.codec {
                Codec::AffineU8 | Codec::AffineU8Zstd { .. } if !t.dtype.is_float() => {
                    return bad(format!("tensor {:?}: {} needs a float dtype, got {}", t.name, t.codec.name(), t.dtype))
                }
                _ => {}
            }
            if let Some(level) = t.codec.zstd_level().filter(|l| !(-7..=22).contains(l)) {
                return bad(format!("tensor {:?}: zstd level {level} outside -7..=22", t.name));
            }
            if t.codec.needs_base() {
                self.residual_base(i).map_err(|what| FormatError::InvalidInput { what })?;
            }
        }
        Ok(())
    }
}

/// A patch rectangle in LR pixels of the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PatchBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// Per-sample metadata stored in the shard index (and mirrored in the manifest).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SampleMeta {
    pub id: String,
    pub source: String,
    pub patch: PatchBox,
    pub variant: String,
    /// PSNR (dB, Y channel) of each expert's output against HR, keyed by expert name.
    #[serde(default)]
    pub psnr: BTreeMap<String, f32>,
}
