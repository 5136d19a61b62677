//! The loader's inner loop: crop a CHW tensor straight out of the shard bytes and apply one of the 8 dihedral
//! transforms (bit 2: transpose, bit 1: vertical flip, bit 0: horizontal flip), either keeping the stored dtype
//! or converting to f32.
//!
//! Every transform is done as at most two streaming passes: an optional transpose of the crop in SIMD blocks
//! into a scratch plane (8×8 for 2-byte elements, 16×16 for bytes: SSE2 unpacks, baseline x86-64), then row
//! copies that read row a(i) of the (transposed) crop and write it forwards or reversed. Element-by-element
//! gathers ran at ~1 ns an element, several times slower than the copy they replace.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use srcache_formats::DType;

/// A crop box: (y0, x0, side) in the tensor's own pixels.
pub(crate) type Crop = (usize, usize, usize);

fn check(bytes: usize, [ch, h, w]: [usize; 3], es: usize, (y0, x0, side): Crop) -> Result<(), String> {
    if bytes != ch * h * w * es {
        return Err(format!("{bytes} bytes for shape {:?} of {es}-byte elements", [ch, h, w]));
    }
    if y0 + side > h || x0 + side > w {
        return Err(format!("crop {side} at ({y0},{x0}) outside {h}x{w}"));
    }
    Ok(())
}

/// Source row of output row `i` (in the crop, or in its transpose) under a vertical flip.
fn src_row(i: usize, side: usize, fv: bool) -> usize {
    if fv {
        side - 1 - i
    } else {
        i
    }
}

/// The rows of one plane that the output rows are read from, as (rows, row stride, (y, x) offset): the crop
/// in place, or for a transposing transform its transpose written into `tr` (SIMD blocks when the side allows).
/// Output row i is then `rows[(off.0 + src_row(i)) * stride + off.1..][..side]`, reversed for a horizontal flip.
fn oriented<'a, const N: usize>(
    plane: &'a [[u8; N]],
    w: usize,
    crop: Crop,
    transpose: bool,
    tr: &'a mut Vec<u8>,
) -> (&'a [[u8; N]], usize, (usize, usize)) {
    let (y0, x0, side) = crop;
    if !transpose {
        return (plane, w, (y0, x0));
    }
    tr.resize(side * side * N, 0);
    let (tt, _) = tr.as_chunks_mut::<N>();
    if !transpose_crop::<N>(plane, w, crop, tt) {
        transpose_scalar(plane, w, crop, tt);
    }
    (tt, side, (0, 0))
}

/// Crops and transforms a CHW tensor of `N`-byte elements (N = 1 or 2) without changing the dtype.
pub(crate) fn transform_copy<const N: usize>(
    bytes: &[u8],
    shape: [usize; 3],
    crop: Crop,
    d: u8,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    check(bytes.len(), shape, N, crop)?;
    let [ch, h, w] = shape;
    let side = crop.2;
    let (src, _) = bytes.as_chunks::<N>();
    let (dst, _) = out.as_chunks_mut::<N>();
    if dst.len() != ch * side * side {
        return Err(format!("output holds {} elements, crop needs {}", dst.len(), ch * side * side));
    }
    let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
    let n = side * side;
    for c in 0..ch {
        let (rows, stride, off) = oriented::<N>(&src[c * h * w..(c + 1) * h * w], w, crop, t, scratch);
        let o = &mut dst[c * n..(c + 1) * n];
        for i in 0..side {
            let s0 = (off.0 + src_row(i, side, fv)) * stride + off.1;
            copy_row::<N>(&rows[s0..s0 + side], &mut o[i * side..(i + 1) * side], fh);
        }
    }
    Ok(())
}

/// Crops and transforms a CHW tensor stored as little-endian `dtype` into f32 (u8 times `norm`).
#[allow(clippy::too_many_arguments, reason = "the hot per-tensor call; a struct would only rename the same values")]
pub(crate) fn transform_f32(
    bytes: &[u8],
    dtype: DType,
    shape: [usize; 3],
    norm: f32,
    crop: Crop,
    d: u8,
    out: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    let [ch, h, w] = shape;
    let (y0, x0, side) = crop;
    check(bytes.len(), shape, dtype.size_of(), crop)?;
    if out.len() != ch * side * side {
        return Err(format!("output holds {} values, crop needs {}", out.len(), ch * side * side));
    }
    let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
    let n = side * side;
    if dtype == DType::F16 && cfg!(target_endian = "little") {
        // Transpose (if any) in the stored dtype, then whole rows through half's SIMD (F16C) conversion.
        let (src, _) = bytes.as_chunks::<2>();
        for c in 0..ch {
            let (rows, stride, off) = oriented::<2>(&src[c * h * w..(c + 1) * h * w], w, crop, t, scratch);
            let o = &mut out[c * n..(c + 1) * n];
            for i in 0..side {
                let s0 = (off.0 + src_row(i, side, fv)) * stride + off.1;
                let row = &mut o[i * side..(i + 1) * side];
                let half: &[u16] = &u16_view(&rows[s0..s0 + side]);
                half.reinterpret_cast::<half::f16>().convert_to_f32_slice(row);
                if fh {
                    row.reverse();
                }
            }
        }
        return Ok(());
    }
    let es = dtype.size_of();
    let value = |k: usize| -> f32 {
        let b = &bytes[k * es..(k + 1) * es];
        match dtype {
            DType::U8 => b[0] as f32 * norm,
            DType::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            DType::BF16 => half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            DType::U16 => u16::from_le_bytes([b[0], b[1]]) as f32,
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    };
    for c in 0..ch {
        for i in 0..side {
            for j in 0..side {
                let (a, b) = (src_row(i, side, fv), src_row(j, side, fh));
                let (y, x) = if t { (b, a) } else { (a, b) };
                out[c * n + i * side + j] = value(c * h * w + (y0 + y) * w + x0 + x);
            }
        }
    }
    Ok(())
}

/// 2-byte elements as u16 without copying when aligned (always, for shard maps and Vec scratch), else a copy.
fn u16_view(v: &[[u8; 2]]) -> std::borrow::Cow<'_, [u16]> {
    let bytes = v.as_flattened();
    // SAFETY: u16 has no invalid bit patterns; align_to only yields a middle slice that is aligned.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    if pre.is_empty() && post.is_empty() {
        std::borrow::Cow::Borrowed(mid)
    } else {
        std::borrow::Cow::Owned(v.iter().map(|b| u16::from_le_bytes(*b)).collect())
    }
}

fn transpose_scalar<const N: usize>(plane: &[[u8; N]], w: usize, (y0, x0, side): Crop, dst: &mut [[u8; N]]) {
    for i in 0..side {
        for j in 0..side {
            dst[i * side + j] = plane[(y0 + j) * w + x0 + i];
        }
    }
}

/// Copies `src` into `dst` (same length), reversed when `rev`.
fn copy_row<const N: usize>(src: &[[u8; N]], dst: &mut [[u8; N]], rev: bool) {
    if !rev {
        dst.copy_from_slice(src);
        return;
    }
    let lanes = 16 / N;
    let full = if N == 1 || N == 2 { src.len() / lanes * lanes } else { 0 };
    #[cfg(target_arch = "x86_64")]
    for k in (0..full).step_by(lanes) {
        // SAFETY: 16 bytes at src[k..k+lanes] and dst[len-k-lanes..len-k] are in bounds (k + lanes <= full).
        unsafe {
            use std::arch::x86_64::*;
            let v = _mm_loadu_si128(src.as_ptr().add(k) as *const __m128i);
            let r = if N == 2 { reverse_u16x8(v) } else { reverse_u8x16(v) };
            _mm_storeu_si128(dst.as_mut_ptr().add(dst.len() - k - lanes) as *mut __m128i, r);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let full = 0;
    let n = src.len();
    for k in full..n {
        dst[n - 1 - k] = src[k];
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reverse_u16x8(v: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is baseline on x86-64; shuffles have no memory effects.
    unsafe { _mm_shuffle_epi32::<0x4E>(_mm_shufflehi_epi16::<0x1B>(_mm_shufflelo_epi16::<0x1B>(v))) }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reverse_u8x16(v: std::arch::x86_64::__m128i) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    let w = reverse_u16x8(v);
    // SAFETY: as above; swapping the two bytes of each word finishes the byte reversal.
    unsafe { _mm_or_si128(_mm_slli_epi16::<8>(w), _mm_srli_epi16::<8>(w)) }
}

/// Transposes the `side`×`side` crop at (y0, x0) of `plane` (row length `w`) into `dst` (T(i, j) = crop(j, i))
/// with SIMD blocks; false (nothing written) when the side is not a multiple of the block or there is no
/// SIMD kernel for this element size / architecture.
fn transpose_crop<const N: usize>(plane: &[[u8; N]], w: usize, (y0, x0, side): Crop, dst: &mut [[u8; N]]) -> bool {
    let block = match N {
        1 => 16,
        2 => 8,
        _ => return false,
    };
    if !cfg!(target_arch = "x86_64") || side % block != 0 || dst.len() < side * side || (y0 + side - 1) * w + x0 + side > plane.len() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    for by in (0..side).step_by(block) {
        for bx in (0..side).step_by(block) {
            // SAFETY: the block's rows lie inside the crop, which lies inside `plane` (checked above), and its
            // transpose inside `dst` (side × side elements).
            unsafe {
                let s = plane.as_ptr().add((y0 + by) * w + x0 + bx) as *const u8;
                let d = dst.as_mut_ptr().add(bx * side + by) as *mut u8;
                if N == 2 {
                    x86::transpose8x8_u16(s, w * 2, d, side * 2);
                } else {
                    x86::transpose16x16_u8(s, w, d, side);
                }
            }
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// 8 rows of 16 bytes readable at `src + k * ss` and writable at `dst + k * ds`.
    #[inline(always)]
    pub unsafe fn transpose8x8_u16(src: *const u8, ss: usize, dst: *mut u8, ds: usize) {
        // SAFETY: the caller vouches for the 8 rows; SSE2 is baseline on x86-64.
        unsafe {
            let r: [__m128i; 8] = std::array::from_fn(|k| _mm_loadu_si128(src.add(k * ss) as *const __m128i));
            let a: [__m128i; 8] = std::array::from_fn(|k| {
                let (p, q) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
                if k % 2 == 0 {
                    _mm_unpacklo_epi16(p, q)
                } else {
                    _mm_unpackhi_epi16(p, q)
                }
            });
            // b[k]: 32-bit interleave of a[...] pairs (0,2),(1,3) for rows 0-3 and (4,6),(5,7) for rows 4-7.
            let b: [__m128i; 8] = std::array::from_fn(|k| {
                let base = k / 4 * 4;
                let (p, q) = (a[base + k % 4 / 2], a[base + k % 4 / 2 + 2]);
                if k % 2 == 0 {
                    _mm_unpacklo_epi32(p, q)
                } else {
                    _mm_unpackhi_epi32(p, q)
                }
            });
            for k in 0..8 {
                let (p, q) = (b[k / 2], b[k / 2 + 4]);
                let c = if k % 2 == 0 { _mm_unpacklo_epi64(p, q) } else { _mm_unpackhi_epi64(p, q) };
                _mm_storeu_si128(dst.add(k * ds) as *mut __m128i, c);
            }
        }
    }

    /// # Safety
    /// 16 rows of 16 bytes readable at `src + k * ss` and writable at `dst + k * ds`.
    #[inline(always)]
    pub unsafe fn transpose16x16_u8(src: *const u8, ss: usize, dst: *mut u8, ds: usize) {
        // SAFETY: as above.
        unsafe {
            let r: [__m128i; 16] = std::array::from_fn(|k| _mm_loadu_si128(src.add(k * ss) as *const __m128i));
            // t[2m], t[2m+1]: bytes of rows (2m, 2m+1) interleaved, columns 0-7 and 8-15.
            let t: [__m128i; 16] = std::array::from_fn(|k| {
                let (p, q) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
                if k % 2 == 0 {
                    _mm_unpacklo_epi8(p, q)
                } else {
                    _mm_unpackhi_epi8(p, q)
                }
            });
            // u: 16-bit interleave of t pairs (0,2),(1,3) within each group of 4 rows.
            let u: [__m128i; 16] = std::array::from_fn(|k| {
                let base = k / 4 * 4;
                let (p, q) = (t[base + k % 4 / 2], t[base + k % 4 / 2 + 2]);
                if k % 2 == 0 {
                    _mm_unpacklo_epi16(p, q)
                } else {
                    _mm_unpackhi_epi16(p, q)
                }
            });
            // v: 32-bit interleave of u pairs (k, k+4) within each group of 8 rows.
            let v: [__m128i; 16] = std::array::from_fn(|k| {
                let base = k / 8 * 8;
                let (p, q) = (u[base + k % 8 / 2], u[base + k % 8 / 2 + 4]);
                if k % 2 == 0 {
                    _mm_unpacklo_epi32(p, q)
                } else {
                    _mm_unpackhi_epi32(p, q)
                }
            });
            for k in 0..16 {
                let (p, q) = (v[k / 2], v[k / 2 + 8]);
                let c = if k % 2 == 0 { _mm_unpacklo_epi64(p, q) } else { _mm_unpackhi_epi64(p, q) };
                _mm_storeu_si128(dst.add(k * ds) as *mut __m128i, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: out(c, i, j) from the definition, one element at a time.
    fn reference<T: Copy>(src: &[T], [ch, h, w]: [usize; 3], (y0, x0, side): Crop, d: u8) -> Vec<T> {
        let (t, fv, fh) = (d & 4 != 0, d & 2 != 0, d & 1 != 0);
        let mut out = Vec::with_capacity(ch * side * side);
        for c in 0..ch {
            for i in 0..side {
                for j in 0..side {
                    let (a, b) = (if fv { side - 1 - i } else { i }, if fh { side - 1 - j } else { j });
                    let (y, x) = if t { (b, a) } else { (a, b) };
                    out.push(src[c * h * w + (y0 + y) * w + x0 + x]);
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_definition() -> Result<(), String> {
        let shape = [3usize, 53, 49];
        let n = shape.iter().product::<usize>();
        let bytes: Vec<u8> = (0..n).map(|k| (k * 7 % 251) as u8).collect();
        let halves: Vec<half::f16> = (0..n).map(|k| half::f16::from_f32((k % 977) as f32 * 0.25)).collect();
        let hbytes: Vec<u8> = halves.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut scratch = Vec::new();
        for side in [8usize, 13, 16, 24, 32] {
            for d in 0..8u8 {
                let crop = (5, 3, side);
                let mut got = vec![0u8; 3 * side * side];
                transform_copy::<1>(&bytes, shape, crop, d, &mut got, &mut scratch)?;
                assert_eq!(got, reference(&bytes, shape, crop, d), "u8 side {side} d {d}");
                let mut got = vec![0u8; 3 * side * side * 2];
                transform_copy::<2>(&hbytes, shape, crop, d, &mut got, &mut scratch)?;
                let (got, _) = got.as_chunks::<2>();
                let (src, _) = hbytes.as_chunks::<2>();
                assert_eq!(got, reference(src, shape, crop, d).as_slice(), "f16 side {side} d {d}");
                let mut f = vec![0f32; 3 * side * side];
                transform_f32(&hbytes, DType::F16, shape, 1.0, crop, d, &mut f, &mut scratch)?;
                let want: Vec<f32> = reference(&halves, shape, crop, d).iter().map(|v| v.to_f32()).collect();
                assert_eq!(f, want, "f16->f32 side {side} d {d}");
                transform_f32(&bytes, DType::U8, shape, 0.5, crop, d, &mut f, &mut scratch)?;
                let want: Vec<f32> = reference(&bytes, shape, crop, d).iter().map(|&v| v as f32 * 0.5).collect();
                assert_eq!(f, want, "u8->f32 side {side} d {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut s = Vec::new();
        let mut out = vec![0u8; 16];
        assert!(transform_copy::<1>(&[0u8; 10], [1, 4, 4], (0, 0, 4), 0, &mut out, &mut s).is_err());
        assert!(transform_copy::<1>(&[0u8; 16], [1, 4, 4], (1, 0, 4), 0, &mut out, &mut s).is_err());
    }
}
