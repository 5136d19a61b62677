//! Tensor codecs. Payload layouts are specified in FORMAT.md ("Codecs"); the Python reader mirrors them.

use std::cell::RefCell;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use xxhash_rust::xxh3::xxh3_64;

use crate::{residual, Codec, CodecError, DType, FormatError, Result, TensorSpec};

/// A tensor payload ready to be appended to a shard: encoding is CPU-heavy, so callers do it on worker
/// threads and hand the result to the (single) writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedTensor {
    pub bytes: Vec<u8>,
    /// Logical (decoded) length in bytes: numel * dtype size.
    pub raw_len: u64,
    /// xxh3-64 of `bytes` (the stored payload).
    pub checksum: u64,
}

/// Encodes `raw` (little-endian values of `spec.dtype`, `numel * size_of` bytes) with `spec.codec`.
/// A [`Codec::ResidualU8`] tensor needs its base: use [`encode_with_base`] (this returns an error for it).
pub fn encode(spec: &TensorSpec, raw: &[u8]) -> Result<EncodedTensor> {
    encode_impl(spec, raw, None, None)
}

/// [`encode`] taking ownership of the buffer: the Raw codec then stores it as is instead of copying it
/// (the ingest-only path writes ~16 MB of patches per 2K image, where every copy shows).
pub fn encode_owned(spec: &TensorSpec, raw: Vec<u8>) -> Result<EncodedTensor> {
    encode_impl(spec, &[], Some(raw), None)
}

/// [`encode`] for any codec, given the sample's `lr` (u8 [3, h, w] CHW bytes, exactly as stored in the same
/// sample) as `base_lr`: required by [`Codec::ResidualU8`] (stored as `sr − B(lr)`, see
/// [`crate::residual::bicubic_u8`]), ignored by the other codecs. `h`, `w` and the scale follow from the
/// base's length and the spec's shape [3, s·h, s·w]; a base that fits no whole scale is an error.
pub fn encode_with_base(spec: &TensorSpec, raw: &[u8], base_lr: Option<&[u8]>) -> Result<EncodedTensor> {
    encode_impl(spec, raw, None, base_lr)
}

/// Encodes one sample's tensors (`raw` in schema order), passing `lr` to the residual ones.
pub(crate) fn encode_sample(schema: &crate::Schema, raw: &[&[u8]]) -> Result<Vec<EncodedTensor>> {
    let lr = schema.index_of("lr").and_then(|k| raw.get(k).copied());
    schema.tensors.iter().zip(raw).map(|(s, r)| encode_with_base(s, r, lr)).collect()
}

/// `owned`, when given, is the input (and `raw` is ignored).
fn encode_impl(spec: &TensorSpec, raw: &[u8], owned: Option<Vec<u8>>, base_lr: Option<&[u8]>) -> Result<EncodedTensor> {
    let err = |what: String| FormatError::Encode { tensor: spec.name.clone(), what };
    let raw: &[u8] = owned.as_deref().unwrap_or(raw);
    let want = spec.raw_len().ok_or_else(|| err(format!("shape {:?} overflows", spec.shape)))?;
    if raw.len() != want {
        return Err(err(format!("got {} bytes, {} {:?} needs {want}", raw.len(), spec.dtype, spec.shape)));
    }
    let bytes = match spec.codec {
        Codec::Raw => match owned {
            Some(v) => v,
            None => raw.to_vec(),
        },
        Codec::Zstd { level } => zstd_compress(raw, level).map_err(err)?,
        Codec::ShuffleZstd { level } => {
            let k = spec.dtype.size_of();
            if k == 1 {
                zstd_compress(raw, level).map_err(err)?
            } else {
                let mut planes = vec![0u8; raw.len()];
                shuffle(raw, &mut planes, k);
                zstd_compress(&planes, level).map_err(err)?
            }
        }
        Codec::AffineU8 => affine_encode(spec, raw).map_err(err)?,
        Codec::AffineU8Zstd { level } => zstd_compress(&affine_encode(spec, raw).map_err(err)?, level).map_err(err)?,
        Codec::ResidualU8 { level } => {
            let base = base_lr.ok_or_else(|| {
                err("residual_u8 needs the same sample's lr as its base: use encode_with_base (DatasetWriter::write and ShardWriter::write pass it)".into())
            })?;
            let (h, w, s) = residual_geometry(spec, base).map_err(|e| err(e.to_string()))?;
            let mut diff = vec![0u8; raw.len()];
            residual::subtract_base(raw, base, h, w, s, &mut diff);
            zstd_compress(&diff, level).map_err(err)?
        }
    };
    let checksum = xxh3_64(&bytes);
    Ok(EncodedTensor { bytes, raw_len: want as u64, checksum })
}

/// Stored payload length the codec must produce, when it is fixed (Raw, AffineU8); None for the zstd codecs.
pub(crate) fn fixed_stored_len(spec: &TensorSpec) -> Option<u64> {
    let raw = spec.raw_len()? as u64;
    match spec.codec {
        Codec::Raw => Some(raw),
        Codec::AffineU8 => affine_len(spec),
        _ => None,
    }
}

/// Length of an AffineU8 payload: C × 8 bytes of (scale, offset), then numel u8.
fn affine_len(spec: &TensorSpec) -> Option<u64> {
    (spec.channels() as u64).checked_mul(8)?.checked_add(spec.numel() as u64)
}

/// What the zstd frame of a zstd-based codec decompresses to, in bytes (None for Raw/AffineU8, or on overflow):
/// the logical bytes, except for AffineU8Zstd (the AffineU8 payload).
pub(crate) fn zstd_content_len(spec: &TensorSpec) -> Option<u64> {
    match spec.codec {
        Codec::Raw | Codec::AffineU8 => None,
        Codec::AffineU8Zstd { .. } => affine_len(spec),
        Codec::Zstd { .. } | Codec::ShuffleZstd { .. } | Codec::ResidualU8 { .. } => spec.raw_len().map(|n| n as u64),
    }
}

/// (h, w, s) of a residual tensor from its base's length.
fn residual_geometry(spec: &TensorSpec, base: &[u8]) -> std::result::Result<(usize, usize, usize), CodecError> {
    residual::geometry(&spec.shape, base.len()).ok_or_else(|| CodecError::BaseSize { got: base.len(), shape: spec.shape.clone() })
}

/// Decodes a stored payload into `out` (exactly the logical length). The error is a bare description;
/// the shard layer adds the path, sample and tensor. [`Codec::ResidualU8`] needs its base: use
/// [`decode_payload_with_base`] (this returns [`CodecError::NeedsBase`] for it).
pub fn decode_payload(spec: &TensorSpec, stored: &[u8], out: &mut [u8]) -> std::result::Result<(), CodecError> {
    decode_payload_with_base(spec, stored, None, out)
}

/// [`decode_payload`] for any codec, given the sample's decoded `lr` (u8 [3, h, w] CHW) as `base_lr`:
/// required by [`Codec::ResidualU8`], ignored by the other codecs.
pub fn decode_payload_with_base(spec: &TensorSpec, stored: &[u8], base_lr: Option<&[u8]>, out: &mut [u8]) -> std::result::Result<(), CodecError> {
    if Some(out.len()) != spec.raw_len() {
        return Err(CodecError::OutputSize { got: out.len(), want: spec.raw_len().unwrap_or(0) });
    }
    match spec.codec {
        Codec::Raw => {
            if stored.len() != out.len() {
                return Err(CodecError::RawSize { got: stored.len(), want: out.len() });
            }
            out.copy_from_slice(stored);
            Ok(())
        }
        Codec::Zstd { .. } => zstd_decompress(stored, out),
        Codec::ShuffleZstd { .. } => {
            let k = spec.dtype.size_of();
            if k == 1 {
                return zstd_decompress(stored, out);
            }
            SCRATCH.with(|s| {
                let mut planes = s.borrow_mut();
                planes.clear();
                planes.resize(out.len(), 0);
                zstd_decompress(stored, &mut planes)?;
                unshuffle(&planes, out, k);
                Ok(())
            })
        }
        Codec::AffineU8 => affine_decode(spec, stored, out),
        Codec::AffineU8Zstd { .. } => {
            let want = affine_len(spec).and_then(|n| usize::try_from(n).ok()).ok_or(CodecError::OutputSize { got: out.len(), want: 0 })?;
            AFFINE_SCRATCH.with(|s| {
                // A nested decode on this thread (none exists) would get a fresh buffer instead of a panic.
                let mut fresh = Vec::new();
                let mut guard = s.try_borrow_mut().ok();
                let payload = guard.as_deref_mut().unwrap_or(&mut fresh);
                payload.clear();
                payload.try_reserve_exact(want).map_err(|_| CodecError::Alloc { bytes: want })?;
                payload.resize(want, 0);
                zstd_decompress(stored, payload)?;
                affine_decode(spec, payload, out)
            })
        }
        Codec::ResidualU8 { .. } => {
            let base = base_lr.ok_or(CodecError::NeedsBase)?;
            let (h, w, s) = residual_geometry(spec, base)?;
            zstd_decompress(stored, out)?;
            residual::add_base(out, base, h, w, s);
            Ok(())
        }
    }
}

/// Decodes a [`Codec::ResidualU8`] payload given its base already upscaled: `upscaled` is B(lr)
/// ([`crate::residual::bicubic_u8_into`]), the same length as `out`. The same bytes as
/// [`decode_payload_with_base`] with the lr itself, without recomputing B for every expert of a sample.
pub fn decode_residual_upscaled(spec: &TensorSpec, stored: &[u8], upscaled: &[u8], out: &mut [u8]) -> std::result::Result<(), CodecError> {
    if Some(out.len()) != spec.raw_len() {
        return Err(CodecError::OutputSize { got: out.len(), want: spec.raw_len().unwrap_or(0) });
    }
    if !spec.codec.needs_base() {
        return decode_payload(spec, stored, out);
    }
    if upscaled.len() != out.len() {
        // Only a caller's bug gets here (the shard layer sizes the base from the spec).
        return Err(CodecError::OutputSize { got: upscaled.len(), want: out.len() });
    }
    zstd_decompress(stored, out)?;
    residual::add_upscaled(out, upscaled);
    Ok(())
}

/// Per-channel (scale, offset) of an AffineU8Zstd payload: only the head of the frame is decompressed.
pub(crate) fn affine_zstd_params(spec: &TensorSpec, stored: &[u8]) -> Option<Vec<(f32, f32)>> {
    use std::io::Read;
    let n = spec.channels().checked_mul(8)?;
    let mut head = Vec::new();
    head.try_reserve_exact(n).ok()?;
    head.resize(n, 0);
    let mut dec = zstd::stream::read::Decoder::with_buffer(stored).ok()?;
    dec.read_exact(&mut head).ok()?;
    affine_params(spec, &head)
}

thread_local! {
    // Reused per thread: decode is the hot path of training and must not allocate per tensor.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static AFFINE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8], level: i32) -> std::result::Result<Vec<u8>, String> {
    zstd::bulk::compress(data, level).map_err(|e| format!("zstd: {e}"))
}

fn zstd_decompress(src: &[u8], out: &mut [u8]) -> std::result::Result<(), CodecError> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|source| CodecError::Zstd { source })?);
        }
        let Some(dctx) = d.as_mut() else { return Err(CodecError::Zstd { source: std::io::Error::other("no zstd context") }) };
        let n = dctx.decompress_to_buffer(src, out).map_err(|source| CodecError::Zstd { source })?;
        if n != out.len() {
            return Err(CodecError::ZstdSize { got: n, want: out.len() });
        }
        Ok(())
    })
}

/// The most logical bytes a zstd frame of `stored` bytes can hold: a block holds at most 128 KiB and takes at
/// least 4 bytes (an RLE block), so no legitimate frame expands by more than 32768x. A larger claim is a
/// crafted or corrupt entry, refused before anything is allocated for it.
pub(crate) fn zstd_max_expansion(stored: u64) -> u64 {
    stored.saturating_mul(32768)
}

/// Byte planes: plane j holds byte j of every element.
fn shuffle(src: &[u8], dst: &mut [u8], k: usize) {
    let n = src.len() / k;
    match k {
        2 => {
            let (p0, p1) = dst.split_at_mut(n);
            for ((e, a), b) in src.chunks_exact(2).zip(p0).zip(p1) {
                *a = e[0];
                *b = e[1];
            }
        }
        _ => {
            for (i, e) in src.chunks_exact(k).enumerate() {
                for (j, &b) in e.iter().enumerate() {
                    dst[j * n + i] = b;
                }
            }
        }
    }
}

fn unshuffle(planes: &[u8], out: &mut [u8], k: usize) {
    let n = out.len() / k;
    match k {
        2 => {
            let (p0, p1) = planes.split_at(n);
            for ((e, &a), &b) in out.chunks_exact_mut(2).zip(p0).zip(p1) {
                e[0] = a;
                e[1] = b;
            }
        }
        4 => {
            let (p0, rest) = planes.split_at(n);
            let (p1, rest) = rest.split_at(n);
            let (p2, p3) = rest.split_at(n);
            for (i, e) in out.chunks_exact_mut(4).enumerate() {
                e[0] = p0[i];
                e[1] = p1[i];
                e[2] = p2[i];
                e[3] = p3[i];
            }
        }
        _ => {
            for (i, e) in out.chunks_exact_mut(k).enumerate() {
                for (j, b) in e.iter_mut().enumerate() {
                    *b = planes[j * n + i];
                }
            }
        }
    }
}

/// Little-endian element `i` of `raw` as f32.
pub(crate) fn to_f32_into(dtype: DType, raw: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.reserve(raw.len() / dtype.size_of());
    match dtype {
        DType::U8 => out.extend(raw.iter().map(|&b| b as f32)),
        DType::U16 => out.extend(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32)),
        DType::F16 => out.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::BF16 => out.extend(raw.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
    }
}

fn affine_encode(spec: &TensorSpec, raw: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let c = spec.channels();
    let numel = spec.numel();
    let mut vals = Vec::new();
    to_f32_into(spec.dtype, raw, &mut vals);
    let per = numel.checked_div(c).unwrap_or(0);
    let mut out = Vec::with_capacity(8 * c + numel);
    let mut params = Vec::with_capacity(c);
    for ch in 0..c {
        let chan = &vals[ch * per..(ch + 1) * per];
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in chan {
            if !v.is_finite() {
                return Err(format!("affine_u8 cannot store non-finite value {v} (channel {ch})"));
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if per == 0 {
            (lo, hi) = (0.0, 0.0);
        }
        let scale = (hi - lo) / 255.0;
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&lo.to_le_bytes());
        params.push((scale, lo));
    }
    for (ch, &(scale, lo)) in params.iter().enumerate() {
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend(vals[ch * per..(ch + 1) * per].iter().map(|&v| ((v - lo) * inv).round().clamp(0.0, 255.0) as u8));
    }
    Ok(out)
}

/// Per-channel (scale, offset) of an AffineU8 payload.
pub(crate) fn affine_params(spec: &TensorSpec, stored: &[u8]) -> Option<Vec<(f32, f32)>> {
    let c = spec.channels();
    let head = stored.get(..8 * c)?;
    Some(head.chunks_exact(8).map(|p| (f32::from_le_bytes([p[0], p[1], p[2], p[3]]), f32::from_le_bytes([p[4], p[5], p[6], p[7]]))).collect())
}

fn affine_decode(spec: &TensorSpec, stored: &[u8], out: &mut [u8]) -> std::result::Result<(), CodecError> {
    let c = spec.channels();
    let numel = spec.numel();
    if Some(stored.len() as u64) != affine_len(spec) {
        return Err(CodecError::AffineSize { got: stored.len(), want: 8 * c + numel });
    }
    let params = affine_params(spec, stored).ok_or(CodecError::AffineSize { got: stored.len(), want: 8 * c + numel })?;
    let q = &stored[8 * c..];
    let per = numel.checked_div(c).unwrap_or(0);
    let k = spec.dtype.size_of();
    for (ch, &(scale, offset)) in params.iter().enumerate() {
        // A 256-entry table per channel: decode becomes a lookup, and Rust and numpy agree bit-for-bit
        // because both evaluate `offset + scale * q` in f32 without fusing. The 256 conversions go through the
        // slice converters (F16C, 8 at a time, when the CPU has it; the same rounding as one at a time): built
        // one value at a time, the table cost as much as the lookups on 32×32 features.
        let mut vals = [0f32; 256];
        for (qv, v) in vals.iter_mut().enumerate() {
            *v = offset + scale * qv as f32;
        }
        let mut lut = [0u8; 256 * 4];
        match spec.dtype {
            DType::F16 => {
                let mut h = [f16::ZERO; 256];
                h.convert_from_f32_slice(&vals);
                for (d, v) in lut.chunks_exact_mut(2).zip(h) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::BF16 => {
                let mut h = [bf16::ZERO; 256];
                h.convert_from_f32_slice(&vals);
                for (d, v) in lut.chunks_exact_mut(2).zip(h) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::F32 => {
                for (d, v) in lut.chunks_exact_mut(4).zip(vals) {
                    d.copy_from_slice(&v.to_le_bytes());
                }
            }
            DType::U8 | DType::U16 => return Err(CodecError::AffineDtype { dtype: spec.dtype }),
        }
        let qs = &q[ch * per..(ch + 1) * per];
        let dst = &mut out[ch * per * k..(ch + 1) * per * k];
        // Fixed-width lookups: a runtime-sized copy per element costs a memcpy call each (the loader's hot path).
        match k {
            2 => lookup::<2>(&lut, qs, dst),
            4 => lookup::<4>(&lut, qs, dst),
            _ => {
                for (e, &qv) in dst.chunks_exact_mut(k).zip(qs) {
                    e.copy_from_slice(&lut[qv as usize * k..(qv as usize + 1) * k]);
                }
            }
        }
    }
    Ok(())
}

/// `dst[i] = lut[qs[i]]` for K-byte elements.
fn lookup<const K: usize>(lut: &[u8; 256 * 4], qs: &[u8], dst: &mut [u8]) {
    let mut table = [[0u8; K]; 256];
    for (qv, t) in table.iter_mut().enumerate() {
        t.copy_from_slice(&lut[qv * K..(qv + 1) * K]);
    }
    for (e, &qv) in dst.chunks_exact_mut(K).zip(qs) {
        e.copy_from_slice(&table[qv as usize]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed unwrap is a failed test")]
mod tests {
    use super::*;

    /// The table as it was built before: one `from_f32` per entry.
    fn affine_decode_reference(spec: &TensorSpec, stored: &[u8]) -> Vec<u8> {
        let c = spec.channels();
        let per = spec.numel() / c;
        let k = spec.dtype.size_of();
        let params = affine_params(spec, stored).unwrap();
        let q = &stored[8 * c..];
        let mut out = vec![0u8; spec.numel() * k];
        for (ch, &(scale, offset)) in params.iter().enumerate() {
            for (i, &qv) in q[ch * per..(ch + 1) * per].iter().enumerate() {
                let v = offset + scale * qv as f32;
                let b = match spec.dtype {
                    DType::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                    DType::BF16 => bf16::from_f32(v).to_le_bytes().to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                };
                out[(ch * per + i) * k..][..k].copy_from_slice(&b);
            }
        }
        out
    }

    #[test]
    fn slice_conversions_round_like_one_at_a_time() {
        // A spread of f32 bit patterns: normals, f16 subnormals, overflow to infinity, both signs.
        let vals: Vec<f32> = (0..(1u64 << 32)).step_by(4099).map(|b| f32::from_bits(b as u32)).filter(|v| !v.is_nan()).collect();
        let mut h = vec![f16::ZERO; vals.len()];
        h.convert_from_f32_slice(&vals);
        assert!(h.iter().zip(&vals).all(|(a, &v)| a.to_bits() == f16::from_f32(v).to_bits()));
        let mut b = vec![bf16::ZERO; vals.len()];
        b.convert_from_f32_slice(&vals);
        assert!(b.iter().zip(&vals).all(|(a, &v)| a.to_bits() == bf16::from_f32(v).to_bits()));
    }

    #[test]
    fn affine_decode_matches_the_per_entry_table_on_real_pixels() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingest/assets/photos/coffee.png");
        let img = image::open(&path).unwrap().to_rgb8();
        let (c, hw) = (12, 32 * 32);
        // Feature-like channels from real pixels: per channel a different range (tiny, negative, large).
        let vals: Vec<f32> = (0..c * hw)
            .map(|i| {
                let (ch, j) = (i / hw, i % hw);
                let px = img.get_pixel((j % 32 * 7) as u32, (j / 32 * 5) as u32)[ch % 3] as f32 / 255.0;
                [1e-6, -3.0, 250.0, 0.01][ch % 4] * (px - 0.3 * (ch / 4) as f32)
            })
            .collect();
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let raw: Vec<u8> = match dtype {
                DType::F16 => vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
                DType::BF16 => vals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
                _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            for codec in [Codec::AffineU8, Codec::AFFINE_U8_ZSTD] {
                let spec = TensorSpec::new("feat/a", dtype, &[c, 32, 32], codec);
                let enc = encode(&spec, &raw).unwrap();
                let mut out = vec![0u8; raw.len()];
                decode_payload(&spec, &enc.bytes, &mut out).unwrap();
                let payload = match codec {
                    Codec::AffineU8 => enc.bytes.clone(),
                    _ => zstd::bulk::decompress(&enc.bytes, 8 * c + c * hw).unwrap(),
                };
                assert_eq!(out, affine_decode_reference(&spec, &payload), "{dtype} {codec}");
            }
        }
    }
}
