//! MATLAB `imresize(img, scale, 'bicubic')`, antialiased, exactly as the SR literature uses it to make LR.
//!
//! The algorithm is MATLAB's (and BasicSR's `matlab_functions.imresize`): a separable resampling where each
//! output coordinate `u = x/scale + 0.5·(1 − 1/scale)` (1-based) takes the cubic kernel (a = −0.5) at the
//! distances to `ceil(width)+2` neighbouring input samples; when downscaling the kernel is stretched by
//! `1/scale` (antialiasing) and scaled by `scale`; weights are normalised to sum 1; out-of-range neighbours are
//! mirrored symmetrically (`x[-1] = x[0]`). The dimension with the smaller scale goes first (rows on ties).
//! Weights and indices are computed once per output line in f64; pixels are accumulated in f32, which is what
//! the reference implementations do for 8-bit input and keeps the inner loops SIMD-friendly.

use image::RgbImage;
use rayon::prelude::*;

/// MATLAB's cubic kernel with a = −0.5.
fn cubic(x: f64) -> f64 {
    let ax = x.abs();
    let ax2 = ax * ax;
    let ax3 = ax2 * ax;
    if ax <= 1.0 {
        1.5 * ax3 - 2.5 * ax2 + 1.0
    } else if ax <= 2.0 {
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    } else {
        0.0
    }
}

/// Per output sample: `taps` input indices (already mirrored into range) and their weights.
#[derive(Debug, Clone)]
pub struct Contributions {
    pub taps: usize,
    pub index: Vec<usize>,
    pub weight: Vec<f32>,
}

/// MATLAB's `contributions(in_length, out_length, scale, kernel, kernel_width, antialiasing)`.
pub fn contributions(in_len: usize, out_len: usize, scale: f64, antialias: bool) -> Contributions {
    let kernel_width = if scale < 1.0 && antialias { 4.0 / scale } else { 4.0 };
    let taps = kernel_width.ceil() as usize + 2;
    let mut index = Vec::with_capacity(out_len * taps);
    let mut weight = Vec::with_capacity(out_len * taps);
    let n = in_len as i64;
    for x in 1..=out_len {
        let u = x as f64 / scale + 0.5 * (1.0 - 1.0 / scale);
        let left = (u - kernel_width / 2.0).floor() as i64;
        let mut w = vec![0f64; taps];
        for (k, wk) in w.iter_mut().enumerate() {
            let j = left + k as i64;
            let d = u - j as f64;
            *wk = if scale < 1.0 && antialias { scale * cubic(d * scale) } else { cubic(d) };
        }
        let sum: f64 = w.iter().sum();
        for (k, wk) in w.iter().enumerate() {
            // 1-based j mirrored symmetrically into [1, n], then 0-based.
            let mut j = left + k as i64;
            while j < 1 || j > n {
                j = if j < 1 { 1 - j } else { 2 * n + 1 - j };
            }
            index.push((j - 1) as usize);
            weight.push((wk / sum) as f32);
        }
    }
    Contributions { taps, index, weight }
}

/// A pixel type the passes read: u8 straight from the decoded image (no f32 copy of a 2K image, which
/// costs more in page faults than the arithmetic) or f32 intermediates. `u8 as f32` is exact, so both give
/// bit-identical sums.
trait Px: Copy + Send + Sync {
    fn f(self) -> f32;
}
impl Px for u8 {
    #[inline(always)]
    fn f(self) -> f32 {
        self as f32
    }
}
impl Px for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}

/// Vertical pass: every output row is a weighted sum of whole input rows, so the inner loop runs along
/// contiguous memory and vectorises.
fn resize_rows<P: Px>(src: &[P], row_len: usize, out_h: usize, rows: &Contributions) -> Vec<f32> {
    let mut out = vec![0f32; out_h * row_len];
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    out.par_chunks_mut(row_len).enumerate().for_each(|(y, dst)| {
        let taps: Vec<(usize, f32)> =
            (0..rows.taps).map(|k| (rows.index[y * rows.taps + k], rows.weight[y * rows.taps + k])).filter(|&(_, wk)| wk != 0.0).collect();
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { rows_line_avx2(dst, src, row_len, &taps) };
            return;
        }
        rows_line(dst, src, row_len, &taps);
    });
    out
}

/// The same code built for AVX2 (8 f32 lanes, one-instruction u8→f32 widening). No FMA: products and sums
/// stay separately rounded, so the output is bit-identical to the baseline build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_line_avx2<P: Px>(dst: &mut [f32], src: &[P], row_len: usize, taps: &[(usize, f32)]) {
    rows_line(dst, src, row_len, taps)
}

/// One output row: accumulates all taps for a block of columns in registers before storing it, instead of
/// one read-modify-write pass over the row per tap. Per element the sum runs over the taps in the same order,
/// so the result is the same to the bit.
#[inline(always)]
fn rows_line<P: Px>(dst: &mut [f32], src: &[P], row_len: usize, taps: &[(usize, f32)]) {
    const L: usize = 64;
    for (ci, d) in dst.chunks_mut(L).enumerate() {
        let base = ci * L;
        let n = d.len();
        let mut acc = [0f32; L];
        if n == L {
            for &(r, wk) in taps {
                let s: &[P; L] = match src[r * row_len + base..r * row_len + base + L].try_into() {
                    Ok(s) => s,
                    Err(_) => continue, // unreachable: the slice is L long
                };
                for j in 0..L {
                    acc[j] += wk * s[j].f();
                }
            }
        } else {
            for &(r, wk) in taps {
                let s = &src[r * row_len + base..r * row_len + base + n];
                for (a, v) in acc.iter_mut().zip(s) {
                    *a += wk * v.f();
                }
            }
        }
        d.copy_from_slice(&acc[..n]);
    }
}

/// One output pixel of the horizontal pass for `C` interleaved channels (C known at compile time so the
/// channel loop unrolls into registers).
#[inline(always)]
fn hpix<P: Px, const C: usize>(srow: &[P], idx: &[usize], wts: &[f32]) -> [f32; C] {
    let mut acc = [0f32; C];
    for (&i, &wk) in idx.iter().zip(wts) {
        let px = &srow[i * C..i * C + C];
        for ch in 0..C {
            acc[ch] += wk * px[ch].f();
        }
    }
    acc
}

/// Horizontal pass: a gather per output pixel, parallel over rows; `emit` stores each output pixel, so the
/// u8 path rounds in the same loop instead of a second pass over the image.
fn resize_cols<P: Px, O: Copy + Default + Send, const C: usize>(
    src: &[P],
    h: usize,
    w: usize,
    out_w: usize,
    cols: &Contributions,
    emit: impl Fn(f32) -> O + Sync,
) -> Vec<O> {
    let mut out = vec![O::default(); h * out_w * C];
    out.par_chunks_mut(out_w * C).enumerate().for_each(|(y, dst)| {
        let srow = &src[y * w * C..(y + 1) * w * C];
        for (x, d) in dst.chunks_exact_mut(C).enumerate() {
            let t = x * cols.taps..(x + 1) * cols.taps;
            let acc = hpix::<P, C>(srow, &cols.index[t.clone()], &cols.weight[t]);
            for (o, a) in d.iter_mut().zip(acc) {
                *o = emit(a);
            }
        }
    });
    out
}

/// Both passes in MATLAB's order (the dimension with the smaller scale first, rows on ties), for `C`
/// interleaved channels.
fn resize_hwc<P: Px, O: Copy + Default + Send, const C: usize>(
    src: &[P],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    emit: impl Fn(f32) -> O + Sync,
) -> Vec<O> {
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        // Nothing to sample from or nothing to make (an image smaller than the scale): an empty or blank
        // result, never a panic in a worker. Ingest refuses such images before resizing (`SmallerThanScale`).
        return vec![O::default(); out_h * out_w * C];
    }
    let sy = out_h as f64 / h as f64;
    let sx = out_w as f64 / w as f64;
    let rows = contributions(h, out_h, sy, true);
    let cols = contributions(w, out_w, sx, true);
    if sy <= sx {
        let tmp = resize_rows(src, w * C, out_h, &rows);
        resize_cols::<f32, O, C>(&tmp, out_h, w, out_w, &cols, emit)
    } else {
        let tmp = resize_cols::<P, f32, C>(src, h, w, out_w, &cols, |v| v);
        let tmp = resize_rows(&tmp, out_w * C, out_h, &rows);
        tmp.into_iter().map(emit).collect()
    }
}

/// Resizes an interleaved f32 image `[h][w][c]` (c = 1 or 3) to `out_h × out_w` with MATLAB bicubic.
pub fn resize_hwc_f32(src: &[f32], h: usize, w: usize, c: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    if c == 3 {
        resize_hwc::<f32, f32, 3>(src, h, w, out_h, out_w, |v| v)
    } else if c == 1 {
        resize_hwc::<f32, f32, 1>(src, h, w, out_h, out_w, |v| v)
    } else {
        // Any other channel count: plane by plane.
        let mut planes = vec![Vec::new(); c];
        for (ch, plane) in planes.iter_mut().enumerate() {
            let p: Vec<f32> = src.iter().skip(ch).step_by(c).copied().collect();
            *plane = resize_hwc::<f32, f32, 1>(&p, h, w, out_h, out_w, |v| v);
        }
        let mut out = vec![0f32; out_h * out_w * c];
        for (ch, plane) in planes.iter().enumerate() {
            for (i, v) in plane.iter().enumerate() {
                out[i * c + ch] = *v;
            }
        }
        out
    }
}

/// Rounds to nearest (MATLAB's uint8 conversion) and clips to 0..255.
/// Written out because `f32::round` is a libm call on baseline x86-64 (a tenth of the resize time); the
/// truncation and `v - t` below are exact, so this equals `v.round().clamp(0.0, 255.0)` for every f32.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord, reason = "the negated form is what sends NaN to 0")]
pub fn to_u8(v: f32) -> u8 {
    if !(v > 0.0) {
        return 0; // negatives, -0.0 and NaN
    }
    if v >= 255.0 {
        return 255;
    }
    let t = v as u32; // v in (0, 255): truncation is floor and exact
    (t + u32::from(v - t as f32 >= 0.5)) as u8
}

/// Crops `img` so both sides are multiples of `scale` (BasicSR/MATLAB `modcrop`, top-left anchored).
/// Scale 0 leaves the image as it is.
pub fn mod_crop(img: &RgbImage, scale: u32) -> RgbImage {
    if scale == 0 {
        return img.clone();
    }
    let (w, h) = (img.width() - img.width() % scale, img.height() - img.height() % scale);
    if (w, h) == img.dimensions() {
        return img.clone();
    }
    image::imageops::crop_imm(img, 0, 0, w, h).to_image()
}

/// Resizes an RGB8 image to `out_w × out_h` (MATLAB bicubic, antialiased when shrinking; u8 rounding).
pub fn imresize(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bytes = resize_hwc::<u8, u8, 3>(img.as_raw(), h, w, out_h as usize, out_w as usize, to_u8);
    RgbImage::from_raw(out_w, out_h, bytes).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

/// The literature's LR: mod-crop HR to a multiple of `scale`, then `imresize(hr, 1/scale, 'bicubic')`.
/// Returns (cropped HR, LR). An image smaller than `scale` gives an empty LR (and scale 0 an empty pair);
/// see [`try_bicubic_lr`] for the checked form ingest uses.
pub fn bicubic_lr(hr: &RgbImage, scale: u32) -> (RgbImage, RgbImage) {
    let hr = mod_crop(hr, scale);
    let lr = match scale {
        0 => RgbImage::new(0, 0),
        s => imresize(&hr, hr.width() / s, hr.height() / s),
    };
    (hr, lr)
}

/// An image too small to have an LR at its scale: (width, height).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallerThanScale(pub u32, pub u32);

/// [`bicubic_lr`] for images that may be smaller than `scale` (a 1x1 PNG at x4): an error instead of an
/// empty LR. `scale` must be ≥ 1.
pub fn try_bicubic_lr(hr: &RgbImage, scale: u32) -> Result<(RgbImage, RgbImage), SmallerThanScale> {
    if scale == 0 || hr.width() < scale || hr.height() < scale {
        return Err(SmallerThanScale(hr.width(), hr.height()));
    }
    Ok(bicubic_lr(hr, scale))
}

/// MATLAB bicubic upscaling by an integer factor: the "bicubic" baseline row of every SR table.
pub fn bicubic_up(lr: &RgbImage, scale: u32) -> RgbImage {
    imresize(lr, lr.width() * scale, lr.height() * scale)
}

/// General MATLAB bicubic resize of a planar f32 image `[c][h][w]` (values in any range, no rounding):
/// antialiased when shrinking, plain bicubic when enlarging. Returns `[c][out_h][out_w]`.
pub fn imresize_f32(chw: &[f32], c: usize, h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * out_h * out_w);
    for plane in chw.chunks(h * w).take(c) {
        out.extend(resize_hwc_f32(plane, h, w, 1, out_h, out_w));
    }
    out
}

/// Backwards-compatible name from docs/CONTRACTS.md.
pub fn imresize_bicubic(img: &RgbImage, scale_down: u32) -> RgbImage {
    bicubic_lr(img, scale_down).1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 build of the vertical pass must equal the baseline build to the bit (no FMA, same order).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_rows_pass_is_bit_identical() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            // Nothing to compare: this CPU never takes the AVX2 path.
            eprintln!("no AVX2 on this CPU: the AVX2 resize path is not used here, nothing to compare");
            return;
        }
        let (row_len, h) = (3 * 200 + 7, 40);
        let src: Vec<u8> = (0..row_len * h).map(|k| (k * 7919 % 256) as u8).collect();
        let rows = contributions(h, 10, 0.25, true);
        for y in 0..10 {
            let taps: Vec<(usize, f32)> = (0..rows.taps).map(|k| (rows.index[y * rows.taps + k], rows.weight[y * rows.taps + k])).collect();
            let (mut a, mut b) = (vec![0f32; row_len], vec![0f32; row_len]);
            rows_line(&mut a, &src, row_len, &taps);
            // SAFETY: AVX2 is available (checked above).
            unsafe { rows_line_avx2(&mut b, &src, row_len, &taps) };
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "row {y} differs");
        }
    }

    #[test]
    fn weights_sum_to_one_and_indices_in_range() {
        for (n, m, s) in [(16, 4, 0.25), (17, 6, 1.0 / 3.0), (5, 20, 4.0), (9, 9, 1.0)] {
            let c = contributions(n, m, s, true);
            for x in 0..m {
                let sum: f32 = c.weight[x * c.taps..(x + 1) * c.taps].iter().sum();
                assert!((sum - 1.0).abs() < 1e-5);
                assert!(c.index[x * c.taps..(x + 1) * c.taps].iter().all(|&i| i < n));
            }
        }
    }

    #[test]
    fn to_u8_is_round_then_clip() {
        let reference = |v: f32| if v.is_nan() { 0 } else { v.round().clamp(0.0, 255.0) as u8 };
        let mut vals: Vec<f32> = (0..2_600_000).map(|i| -3.0 + i as f32 * 1e-4).collect();
        for k in -2..258 {
            // The halfway points and their float neighbours, where a sloppy rounding goes wrong.
            let h = k as f32 + 0.5;
            vals.extend([f32::from_bits(h.to_bits() - 1), h, f32::from_bits(h.to_bits() + 1)]);
        }
        vals.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-30]);
        for v in vals {
            assert_eq!(to_u8(v), reference(v), "{v}");
        }
    }

    #[test]
    fn images_smaller_than_the_scale_do_not_panic() {
        let one = RgbImage::from_pixel(1, 1, image::Rgb([5, 6, 7]));
        for scale in [0, 1, 2, 4, 8] {
            let (_, lr) = bicubic_lr(&one, scale);
            assert_eq!(lr.dimensions(), if scale == 1 { (1, 1) } else { (0, 0) });
            assert_eq!(try_bicubic_lr(&one, scale).is_ok(), scale == 1);
        }
        assert_eq!(imresize(&RgbImage::new(0, 3), 2, 2).dimensions(), (2, 2));
        assert_eq!(imresize(&RgbImage::new(7, 3), 0, 2).dimensions(), (0, 2));
        assert_eq!(try_bicubic_lr(&RgbImage::new(3, 9), 4), Err(SmallerThanScale(3, 9)));
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 29, image::Rgb([200, 17, 90]));
        let (hr, lr) = bicubic_lr(&img, 4);
        assert_eq!(hr.dimensions(), (36, 28));
        assert_eq!(lr.dimensions(), (9, 7));
        assert!(lr.pixels().all(|p| p.0 == [200, 17, 90]));
        let up = bicubic_up(&lr, 3);
        assert!(up.pixels().all(|p| p.0 == [200, 17, 90]));
    }
}
