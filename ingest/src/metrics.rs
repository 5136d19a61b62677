//! PSNR and SSIM the way SR papers report them: BasicSR's `calculate_psnr` / `calculate_ssim` with
//! `test_y_channel=True` — Y of BT.601 YCbCr on 0..255 values, `crop` pixels removed at every border
//! (crop = scale), SSIM with an 11×11 Gaussian window (σ = 1.5) over the valid region only, in float64.

use image::RgbImage;

/// BT.601 luma as BasicSR's `bgr2ycbcr(y_only=True)` computes it, on 0..255 inputs, output in 16..235.
pub fn rgb_to_y(r: f64, g: f64, b: f64) -> f64 {
    16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
}

/// The Y plane of `img` with `crop` pixels removed at each border: (values, width, height).
pub fn y_plane(img: &RgbImage, crop: u32) -> (Vec<f64>, usize, usize) {
    let (w, h) = img.dimensions();
    let (c, w2, h2) = (crop, w.saturating_sub(2 * crop), h.saturating_sub(2 * crop));
    let mut out = Vec::with_capacity((w2 * h2) as usize);
    for y in c..c + h2 {
        for x in c..c + w2 {
            let p = img.get_pixel(x, y).0;
            out.push(rgb_to_y(p[0] as f64, p[1] as f64, p[2] as f64));
        }
    }
    (out, w2 as usize, h2 as usize)
}

/// Y-channel PSNR in dB (infinite for identical images). Images must have equal sizes.
pub fn psnr_y(a: &RgbImage, b: &RgbImage, crop: u32) -> f64 {
    let (ya, _, _) = y_plane(a, crop);
    let (yb, _, _) = y_plane(b, crop);
    psnr_plane(&ya, &yb)
}

/// PSNR of two planes of 0..255 values.
pub fn psnr_plane(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return f64::NAN;
    }
    let mse = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// Y-channel SSIM. Images must have equal sizes and be at least 11×11 after the crop.
pub fn ssim_y(a: &RgbImage, b: &RgbImage, crop: u32) -> f64 {
    let (ya, w, h) = y_plane(a, crop);
    let (yb, _, _) = y_plane(b, crop);
    ssim_plane(&ya, &yb, w, h)
}

/// cv2.getGaussianKernel(11, 1.5).
fn gaussian_11() -> [f64; 11] {
    let mut k = [0f64; 11];
    for (i, v) in k.iter_mut().enumerate() {
        let d = i as f64 - 5.0;
        *v = (-d * d / (2.0 * 1.5 * 1.5)).exp();
    }
    let s: f64 = k.iter().sum();
    k.map(|v| v / s)
}

/// Separable 11×11 Gaussian filter, valid region only: ((w−10) × (h−10)).
fn filter_valid(src: &[f64], w: usize, h: usize, k: &[f64; 11]) -> Vec<f64> {
    let (ow, oh) = (w - 10, h - 10);
    let mut tmp = vec![0f64; ow * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for x in 0..ow {
            tmp[y * ow + x] = (0..11).map(|i| k[i] * row[x + i]).sum();
        }
    }
    let mut out = vec![0f64; ow * oh];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = (0..11).map(|i| k[i] * tmp[(y + i) * ow + x]).sum();
        }
    }
    out
}

/// SSIM of two planes of 0..255 values (BasicSR `_ssim`).
pub fn ssim_plane(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    if w < 11 || h < 11 || a.len() != w * h || b.len() != w * h {
        return f64::NAN;
    }
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let k = gaussian_11();
    let mu1 = filter_valid(a, w, h, &k);
    let mu2 = filter_valid(b, w, h, &k);
    let aa: Vec<f64> = a.iter().map(|v| v * v).collect();
    let bb: Vec<f64> = b.iter().map(|v| v * v).collect();
    let ab: Vec<f64> = a.iter().zip(b).map(|(x, y)| x * y).collect();
    let (s11, s22, s12) = (filter_valid(&aa, w, h, &k), filter_valid(&bb, w, h, &k), filter_valid(&ab, w, h, &k));
    let n = mu1.len();
    let mut total = 0.0;
    for i in 0..n {
        let (m1, m2) = (mu1[i], mu2[i]);
        let (v1, v2, cov) = (s11[i] - m1 * m1, s22[i] - m2 * m2, s12[i] - m1 * m2);
        total += ((2.0 * m1 * m2 + c1) * (2.0 * cov + c2)) / ((m1 * m1 + m2 * m2 + c1) * (v1 + v2 + c2));
    }
    total / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 77]));
        assert!(psnr_y(&img, &img, 4).is_infinite());
        assert!((ssim_y(&img, &img, 4) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn known_psnr_of_a_uniform_offset() {
        // A uniform +1 on G changes Y by 128.553/255 everywhere: PSNR = 20·log10(255 / 0.50413).
        let a = RgbImage::from_pixel(20, 20, image::Rgb([10, 10, 10]));
        let b = RgbImage::from_pixel(20, 20, image::Rgb([10, 11, 10]));
        let expected = 20.0 * (255.0 / (128.553 / 255.0f64)).log10();
        assert!((psnr_y(&a, &b, 2) - expected).abs() < 1e-9);
    }
}
