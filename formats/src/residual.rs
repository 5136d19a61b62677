//! The `residual_u8` codec's base: an integer bicubic upscale `B` that Rust and numpy compute bit for bit
//! (FORMAT.md, "Residual base B"). A u8 SR tensor is stored as `zstd((sr − B(lr)) mod 256)`; SR outputs are
//! close to a bicubic upscale of their input, so the difference is concentrated around 0 and compresses
//! much better than the image itself, losslessly.
//!
//! B in integer arithmetic only: per axis, output index `o = s·m + r` has phase `r`; with `D = 2s` and
//! `num = 2r + 1 − s`, the left-centre tap is `i = m` and the phase fraction is `t = T/D` with `T = num` if
//! `num ≥ 0`, else `i = m − 1` and `T = num + D` (this is `u = (o + ½)/s − ½`, `i = ⌊u⌋`, `t = u − i`).
//! The four taps `i−1..i+2` (clamped to `[0, n−1]`) sit at distances `X/D` with `X = D+T, T, D−T, 2D−T`;
//! the Keys kernel (a = −½) scaled by `2D³` is `K(X) = 3X³ − 5X²D + 2D³` for `X ≤ D`,
//! `−X³ + 5X²D − 8XD² + 4D³` for `D < X < 2D`, 0 beyond; the tap weight is
//! `W = ⌊(256·K + D³) / (2D³)⌋` (round half up of `256·w`), and `256 − ΣW` is added to the largest weight
//! (the first of equals). Horizontal pass `H = Σ Wx·lr`, vertical pass `V = Σ Wy·H` (both i32, exact), output
//! `clamp((V + 32768) >> 16, 0, 255)` with an arithmetic shift.

use std::cell::RefCell;

use crate::{DType, Schema, TensorName};

/// Fixed-point weight scale per axis (weights sum to exactly this).
const ONE: i32 = 256;
/// Right shift after both passes: log2(ONE²).
const SHIFT: u32 = 16;

/// Where a `residual_u8` tensor's base comes from: the schema position of `lr` u8 [3, h, w], and the
/// integer upscaling factor `s` (the residual tensor is [3, s·h, s·w]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidualBase {
    /// Position of `lr` in the schema.
    pub lr: usize,
    pub h: usize,
    pub w: usize,
    pub s: usize,
}

impl Schema {
    /// The base of tensor `t` stored as `residual_u8`: checks that it is a u8 `sr/<expert>` of shape
    /// [3, s·h, s·w] (s ≥ 1 whole, the same on both axes) and that the schema has `lr` u8 [3, h, w].
    pub fn residual_base(&self, t: usize) -> Result<ResidualBase, String> {
        let spec = self.tensors.get(t).ok_or_else(|| format!("tensor position {t} out of range"))?;
        let why = |what: String| format!("tensor {:?}: residual_u8 {what}", spec.name);
        if !matches!(spec.name.parse::<TensorName>(), Ok(TensorName::Sr(_))) {
            return Err(why("is only for SR outputs named sr/<expert>".into()));
        }
        if spec.dtype != DType::U8 {
            return Err(why(format!("needs dtype u8, got {}", spec.dtype)));
        }
        let [3, sh, sw] = spec.shape[..] else { return Err(why(format!("needs shape [3, s·h, s·w], got {:?}", spec.shape))) };
        let lr = self.index_of("lr").ok_or_else(|| why("needs an `lr` tensor (u8 [3, h, w]) in the schema as its base".into()))?;
        let lspec = &self.tensors[lr];
        let [3, h, w] = lspec.shape[..] else { return Err(why(format!("needs lr of shape [3, h, w], got {:?}", lspec.shape))) };
        if lspec.dtype != DType::U8 {
            return Err(why(format!("needs lr of dtype u8, got {}", lspec.dtype)));
        }
        if h == 0 || w == 0 || sh % h != 0 || sw % w != 0 || sh / h != sw / w || sh == 0 {
            return Err(why(format!("needs shape [3, s·{h}, s·{w}] for a whole s ≥ 1 (lr is [3, {h}, {w}]), got {:?}", spec.shape)));
        }
        Ok(ResidualBase { lr, h, w, s: sh / h })
    }
}

/// `(h, w, s)` of a residual whose spec shape is `[3, sh, sw]` and whose base has `base_len` bytes
/// (`3·h·w`): `s² = sh·sw·3 / base_len`, which determines all three.
pub(crate) fn geometry(shape: &[usize], base_len: usize) -> Option<(usize, usize, usize)> {
    let [3, sh, sw] = shape[..] else { return None };
    let area = sh.checked_mul(sw)?.checked_mul(3)?;
    if base_len == 0 || area % base_len != 0 {
        return None;
    }
    let s2 = area / base_len;
    let s = s2.isqrt();
    if s == 0 || s * s != s2 || sh % s != 0 || sw % s != 0 {
        return None;
    }
    let (h, w) = (sh / s, sw / s);
    (3 * h * w == base_len).then_some((h, w, s))
}

/// The four weights of each phase `r` in `0..s` (they sum to exactly [`ONE`]), and the offset of the
/// left-centre tap: `i = m + off[r]` with `off` 0 or −1.
fn phase_weights(s: usize) -> Vec<([i32; 4], isize)> {
    let d = 2 * s as i128;
    let d3 = d * d * d;
    let k = |x: i128| -> i128 {
        if x <= d {
            3 * x * x * x - 5 * x * x * d + 2 * d3
        } else if x < 2 * d {
            -x * x * x + 5 * x * x * d - 8 * x * d * d + 4 * d3
        } else {
            0
        }
    };
    (0..s)
        .map(|r| {
            let num = 2 * r as i128 + 1 - s as i128;
            let (t, off) = if num >= 0 { (num, 0) } else { (num + d, -1) };
            let mut wts = [0i32; 4];
            for (j, x) in [d + t, t, d - t, 2 * d - t].into_iter().enumerate() {
                // |256·K| ≤ 256·2D³, so the quotient is within ±256 and fits i32.
                wts[j] = (ONE as i128 * k(x) + d3).div_euclid(2 * d3) as i32;
            }
            let sum: i32 = wts.iter().sum();
            let big = (1..4).fold(0, |b, j| if wts[j] > wts[b] { j } else { b });
            wts[big] += ONE - sum;
            (wts, off)
        })
        .collect()
}

/// Per output index along an axis of `n` input samples: the four clamped source indices and weights.
fn axis_taps(n: usize, s: usize) -> (Vec<[u32; 4]>, Vec<[i32; 4]>) {
    let phases = phase_weights(s);
    let last = n as isize - 1;
    let mut idx = Vec::with_capacity(n * s);
    let mut wts = Vec::with_capacity(n * s);
    for m in 0..n {
        for (wt, off) in &phases {
            let i = m as isize + off;
            idx.push([0, 1, 2, 3].map(|k| (i - 1 + k).clamp(0, last) as u32));
            wts.push(*wt);
        }
    }
    (idx, wts)
}

/// One output row of the vertical pass: `clamp((Σ wy·rᵢ + 2¹⁵) >> 16, 0, 255)`.
#[inline(always)]
fn vertical_row(row: &mut [u8], r: [&[i32]; 4], wy: [i32; 4]) {
    for ((((o, &p0), &p1), &p2), &p3) in row.iter_mut().zip(r[0]).zip(r[1]).zip(r[2]).zip(r[3]) {
        let v = wy[0] * p0 + wy[1] * p1 + wy[2] * p2 + wy[3] * p3;
        *o = ((v + (1 << (SHIFT - 1))) >> SHIFT).clamp(0, 255) as u8;
    }
}

/// [`vertical_row`] compiled for AVX2: baseline x86-64 (SSE2) has no packed 32-bit multiply, which makes
/// the pass ~4x slower. Integer arithmetic, so every path gives the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn vertical_row_avx2(row: &mut [u8], r: [&[i32]; 4], wy: [i32; 4]) {
    vertical_row(row, r, wy)
}

fn vertical_row_fn() -> fn(&mut [u8], [&[i32]; 4], [i32; 4]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return |row, r, wy| {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { vertical_row_avx2(row, r, wy) }
        };
    }
    vertical_row
}

thread_local! {
    // Horizontal-pass rows, one output row and one edge-padded input row, reused: residual decode is on the
    // training hot path.
    static SCRATCH: RefCell<(Vec<i32>, Vec<u8>, Vec<i32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Horizontal pass of one input row: `out[m·s + r] = Σₖ Wx[r][k]·src[clamp(m + off[r] − 1 + k)]`. The row is
/// first copied into `pad` with 2 edge values on each side (exactly the clamping of the taps), so each phase
/// reads four contiguous windows and the multiply-adds vectorise; only the interleaving store is strided.
/// This used to gather four clamped indices per output through per-output index tables (12–24% of a
/// loader thread on residual caches). Integer arithmetic: the bytes are the same as the gather's.
#[inline(always)]
fn horizontal_row(src: &[u8], pad: &mut [i32], phases: &[([i32; 4], isize)], out: &mut [i32]) {
    let w = src.len();
    let s = phases.len();
    let last = src[w - 1] as i32;
    pad[..2].fill(src[0] as i32);
    for (p, &v) in pad[2..2 + w].iter_mut().zip(src) {
        *p = v as i32;
    }
    pad[2 + w..2 + w + 2].fill(last);
    for (r, (wt, off)) in phases.iter().enumerate() {
        // Output (m, r), tap k reads src index m + off − 1 + k, i.e. pad index m + off + 1 + k (off is 0 or −1).
        let b = (off + 1) as usize;
        let (p0, p1, p2, p3) = (&pad[b..b + w], &pad[b + 1..b + 1 + w], &pad[b + 2..b + 2 + w], &pad[b + 3..b + 3 + w]);
        let outs = out[r..].iter_mut().step_by(s);
        for ((((o, &a), &bb), &c), &d) in outs.zip(p0).zip(p1).zip(p2).zip(p3) {
            *o = wt[0] * a + wt[1] * bb + wt[2] * c + wt[3] * d;
        }
    }
}

/// Both passes of one channel plane: `hbuf` (h × s·w) then each output row to `emit`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane_rows(
    plane: &[u8],
    w: usize,
    phases: &[([i32; 4], isize)],
    yt: &(Vec<[u32; 4]>, Vec<[i32; 4]>),
    bufs: (&mut [i32], &mut [u8], &mut [i32]),
    vrow: fn(&mut [u8], [&[i32]; 4], [i32; 4]),
    base_off: usize,
    emit: &mut impl FnMut(usize, &[u8]),
) {
    let (hbuf, row, pad) = bufs;
    let ow = row.len();
    for (src, hrow) in plane.chunks_exact(w).zip(hbuf.chunks_exact_mut(ow)) {
        horizontal_row(src, pad, phases, hrow);
    }
    for (oy, (iy, wy)) in yt.0.iter().zip(&yt.1).enumerate() {
        vrow(row, iy.map(|i| &hbuf[i as usize * ow..][..ow]), *wy);
        emit(base_off + oy * ow, row);
    }
}

/// [`plane_rows`] compiled for AVX2 (packed 32-bit multiplies for the horizontal pass).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn plane_rows_avx2(
    plane: &[u8],
    w: usize,
    phases: &[([i32; 4], isize)],
    yt: &(Vec<[u32; 4]>, Vec<[i32; 4]>),
    bufs: (&mut [i32], &mut [u8], &mut [i32]),
    vrow: fn(&mut [u8], [&[i32]; 4], [i32; 4]),
    base_off: usize,
    emit: &mut impl FnMut(usize, &[u8]),
) {
    plane_rows(plane, w, phases, yt, bufs, vrow, base_off, emit)
}

/// Computes B of `lr` (C×h×w u8, CHW) row by row and hands each output row to `emit(offset, row)`, where
/// `offset` is the row's start in the C×(s·h)×(s·w) output. Callers have checked the sizes.
fn bicubic_rows(lr: &[u8], h: usize, w: usize, s: usize, mut emit: impl FnMut(usize, &[u8])) {
    let (ow, oh) = (w * s, h * s);
    let c = lr.len() / (h * w);
    let phases = phase_weights(s);
    let yt = axis_taps(h, s);
    let vrow = vertical_row_fn();
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let mut run = |hbuf: &mut Vec<i32>, row: &mut Vec<u8>, pad: &mut Vec<i32>| {
        hbuf.clear();
        hbuf.resize(h * ow, 0);
        row.clear();
        row.resize(ow, 0);
        pad.clear();
        pad.resize(w + 4, 0);
        for ch in 0..c {
            let plane = &lr[ch * h * w..(ch + 1) * h * w];
            let bufs = (&mut hbuf[..], &mut row[..], &mut pad[..]);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 (checked above).
                unsafe { plane_rows_avx2(plane, w, &phases, &yt, bufs, vrow, ch * oh * ow, &mut emit) };
                continue;
            }
            plane_rows(plane, w, &phases, &yt, bufs, vrow, ch * oh * ow, &mut emit);
        }
    };
    // A nested call on the same thread (none exists today) gets fresh buffers instead of a panic.
    let reused = SCRATCH.with(|sc| match sc.try_borrow_mut() {
        Ok(mut b) => {
            let (hbuf, row, pad) = &mut *b;
            run(hbuf, row, pad);
            true
        }
        Err(_) => false,
    });
    if !reused {
        run(&mut Vec::new(), &mut Vec::new(), &mut Vec::new());
    }
}

/// The residual base `B(lr)`: the exact integer bicubic upscale by `s` of `lr_chw` (C×h×w u8, CHW; C = 3
/// for SR data) defined in FORMAT.md, C×(s·h)×(s·w) u8. Identical, byte for byte, to the numpy version in
/// `python/srcache/reader.py` (`bicubic_u8`).
///
/// # Panics
/// If `h`, `w` or `s` is 0 or `lr_chw.len()` is not a multiple of `h·w`.
pub fn bicubic_u8(lr_chw: &[u8], h: usize, w: usize, s: usize) -> Vec<u8> {
    assert!(h > 0 && w > 0 && s > 0, "bicubic_u8: h, w and s must be > 0 (got {h}, {w}, {s})");
    assert!(lr_chw.len().is_multiple_of(h * w), "bicubic_u8: {} bytes are not C x {h} x {w}", lr_chw.len());
    let mut out = vec![0u8; lr_chw.len() * s * s];
    bicubic_rows(lr_chw, h, w, s, |off, row| out[off..off + row.len()].copy_from_slice(row));
    out
}

/// [`bicubic_u8`] into a caller's buffer of exactly C×(s·h)×(s·w) bytes: the loader computes the base of a
/// sample once into a reused buffer and adds it to every expert's residual ([`add_upscaled`]).
///
/// # Panics
/// As [`bicubic_u8`], and if `out.len() != lr_chw.len()·s²`.
pub fn bicubic_u8_into(lr_chw: &[u8], h: usize, w: usize, s: usize, out: &mut [u8]) {
    assert!(h > 0 && w > 0 && s > 0, "bicubic_u8: h, w and s must be > 0 (got {h}, {w}, {s})");
    assert!(lr_chw.len().is_multiple_of(h * w), "bicubic_u8: {} bytes are not C x {h} x {w}", lr_chw.len());
    assert_eq!(out.len(), lr_chw.len() * s * s, "bicubic_u8_into: output size");
    bicubic_rows(lr_chw, h, w, s, |off, row| out[off..off + row.len()].copy_from_slice(row));
}

/// `q = (q + base) mod 256` in place, `base` an already upscaled B(lr) of the same length (checked by the caller).
pub(crate) fn add_upscaled(q: &mut [u8], base: &[u8]) {
    for (o, &b) in q.iter_mut().zip(base) {
        *o = o.wrapping_add(b);
    }
}

/// `out = (sr − B(lr)) mod 256` (sizes checked by the caller).
pub(crate) fn subtract_base(sr: &[u8], lr: &[u8], h: usize, w: usize, s: usize, out: &mut [u8]) {
    bicubic_rows(lr, h, w, s, |off, row| {
        for ((o, &a), &b) in out[off..off + row.len()].iter_mut().zip(&sr[off..off + row.len()]).zip(row) {
            *o = a.wrapping_sub(b);
        }
    });
}

/// `q = (q + B(lr)) mod 256` in place (sizes checked by the caller).
pub(crate) fn add_base(q: &mut [u8], lr: &[u8], h: usize, w: usize, s: usize) {
    bicubic_rows(lr, h, w, s, |off, row| add_upscaled(&mut q[off..off + row.len()], row));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_match_keys() {
        for s in 1..=9 {
            for (r, (w, off)) in phase_weights(s).into_iter().enumerate() {
                assert_eq!(w.iter().sum::<i32>(), ONE, "s={s} r={r}");
                // Against the f64 kernel: the correction moves one weight by at most 2/256.
                let u = (r as f64 + 0.5) / s as f64 - 0.5;
                let t = u - u.floor();
                assert_eq!(off, u.floor() as isize);
                let keys = |x: f64| {
                    let x = x.abs();
                    if x <= 1.0 {
                        1.5 * x * x * x - 2.5 * x * x + 1.0
                    } else if x < 2.0 {
                        -0.5 * x * x * x + 2.5 * x * x - 4.0 * x + 2.0
                    } else {
                        0.0
                    }
                };
                for (j, d) in [1.0 + t, t, 1.0 - t, 2.0 - t].into_iter().enumerate() {
                    assert!((w[j] as f64 - 256.0 * keys(d)).abs() <= 2.5, "s={s} r={r} tap {j}: {} vs {}", w[j], 256.0 * keys(d));
                }
            }
        }
        // s = 2: the weights are exact (multiples of 1/128), no correction needed.
        assert_eq!(phase_weights(2), vec![([-6, 58, 222, -18], -1), ([-18, 222, 58, -6], 0)]);
        assert_eq!(phase_weights(1), vec![([0, 256, 0, 0], 0)]);
    }

    #[test]
    fn scale_one_is_identity_and_flat_stays_flat() {
        let lr: Vec<u8> = (0..3 * 5 * 7).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(bicubic_u8(&lr, 5, 7, 1), lr);
        for s in [2, 3, 4] {
            let flat = vec![200u8; 3 * 4 * 6];
            assert!(bicubic_u8(&flat, 4, 6, s).iter().all(|&v| v == 200));
        }
    }

    #[test]
    fn every_vertical_path_gives_the_same_bytes() {
        let rows: Vec<Vec<i32>> = (0..4).map(|k| (0..1000i32).map(|i| (i * 7919 + k * 104729) % 160_001 - 80_000).collect()).collect();
        let r = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
        for wy in [[-6, 58, 222, -18], [0, 256, 0, 0], [-18, 222, 58, -6], [-4, 120, 150, -10]] {
            let (mut a, mut b) = (vec![0u8; 1000], vec![0u8; 1000]);
            vertical_row(&mut a, r, wy);
            vertical_row_fn()(&mut b, r, wy);
            assert_eq!(a, b);
            let want: Vec<u8> =
                (0..1000).map(|x| ((r.iter().zip(wy).map(|(r, w)| w * r[x]).sum::<i32>() + 32768) >> 16).clamp(0, 255) as u8).collect();
            assert_eq!(a, want);
        }
    }

    /// The original gather implementation (per-output clamped index tables, horizontal then vertical), kept
    /// as the reference the vectorised passes must match byte for byte.
    fn bicubic_gather(lr: &[u8], h: usize, w: usize, s: usize) -> Vec<u8> {
        let (ow, oh) = (w * s, h * s);
        let c = lr.len() / (h * w);
        let (xi, xw) = axis_taps(w, s);
        let (yi, yw) = axis_taps(h, s);
        let mut out = vec![0u8; c * oh * ow];
        let mut hbuf = vec![0i32; h * ow];
        for ch in 0..c {
            let plane = &lr[ch * h * w..(ch + 1) * h * w];
            for (y, hrow) in hbuf.chunks_exact_mut(ow).enumerate() {
                let src = &plane[y * w..(y + 1) * w];
                for ((o, ix), wx) in hrow.iter_mut().zip(&xi).zip(&xw) {
                    *o = (0..4).map(|k| wx[k] * src[ix[k] as usize] as i32).sum();
                }
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let v: i32 = (0..4).map(|k| yw[oy][k] * hbuf[yi[oy][k] as usize * ow + ox]).sum();
                    out[(ch * oh + oy) * ow + ox] = ((v + 32768) >> 16).clamp(0, 255) as u8;
                }
            }
        }
        out
    }

    #[test]
    fn vectorised_passes_match_the_gather() {
        // Sharp content (edges, extremes) exercises the clamp and the edge padding; odd sizes the tails.
        for (h, w, s) in [(1, 1, 4), (2, 3, 2), (5, 7, 3), (16, 16, 4), (13, 31, 4), (8, 9, 1), (6, 5, 5), (32, 33, 2)] {
            let lr: Vec<u8> =
                (0..3 * h * w).map(|i| if ((i * 2654435761usize) >> 7).is_multiple_of(3) { 255 } else { (i * 97 % 256) as u8 }).collect();
            let want = bicubic_gather(&lr, h, w, s);
            assert_eq!(bicubic_u8(&lr, h, w, s), want, "{h}x{w} s={s}");
            let mut into = vec![7u8; want.len()];
            bicubic_u8_into(&lr, h, w, s, &mut into);
            assert_eq!(into, want, "into {h}x{w} s={s}");
        }
    }

    #[test]
    fn geometry_follows_from_lengths() {
        assert_eq!(geometry(&[3, 32, 48], 3 * 8 * 12), Some((8, 12, 4)));
        assert_eq!(geometry(&[3, 8, 12], 3 * 8 * 12), Some((8, 12, 1)));
        assert_eq!(geometry(&[3, 32, 48], 3 * 8 * 11), None);
        assert_eq!(geometry(&[3, 32, 48], 0), None);
        assert_eq!(geometry(&[1, 32, 48], 3 * 8 * 12), None);
    }
}
