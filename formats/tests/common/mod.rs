//! Real test photos (ingest/assets/photos, scikit-image sample data) as CHW u8, and the stand-ins for SR
//! experts the residual tests use.

#![allow(dead_code, reason = "each test crate uses a subset")]
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A photo as CHW u8 with its height and width.
pub fn photo(name: &str) -> (Vec<u8>, usize, usize) {
    let img = image::open(workspace().join("ingest/assets/photos").join(name)).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0u8; 3 * h * w];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = p[c];
        }
    }
    (chw, h, w)
}

/// The [3, ch, cw] crop at (y, x) of a CHW image of width `w` (and height `h`).
pub fn crop(img: &[u8], h: usize, w: usize, y: usize, x: usize, ch: usize, cw: usize) -> Vec<u8> {
    assert!(y + ch <= h && x + cw <= w);
    let mut out = Vec::with_capacity(3 * ch * cw);
    for c in 0..3 {
        for r in y..y + ch {
            out.extend_from_slice(&img[c * h * w + r * w + x..][..cw]);
        }
    }
    out
}

/// Box (area) downscale by s, rounded: the LR a dataset is built from.
pub fn downscale(hr: &[u8], h: usize, w: usize, s: usize) -> Vec<u8> {
    let (lh, lw) = (h / s, w / s);
    let mut out = vec![0u8; 3 * lh * lw];
    for c in 0..3 {
        for y in 0..lh {
            for x in 0..lw {
                let mut sum = 0u32;
                for dy in 0..s {
                    for dx in 0..s {
                        sum += hr[c * h * w + (y * s + dy) * w + x * s + dx] as u32;
                    }
                }
                out[c * lh * lw + y * lw + x] = ((sum + (s * s / 2) as u32) / (s * s) as u32) as u8;
            }
        }
    }
    out
}

/// Float bicubic upscale (Keys kernel with parameter `a`; a = −0.75 is PyTorch's `interpolate(bicubic)`,
/// half-pixel centres, clamped borders), rounded to u8: a stand-in for a smooth SR expert that is NOT the
/// residual's own integer B.
pub fn float_bicubic(lr: &[u8], h: usize, w: usize, s: usize, a: f32) -> Vec<u8> {
    let k = |x: f32| {
        let x = x.abs();
        if x <= 1.0 {
            (a + 2.0) * x * x * x - (a + 3.0) * x * x + 1.0
        } else if x < 2.0 {
            a * x * x * x - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
        } else {
            0.0
        }
    };
    let taps = |n: usize| -> Vec<([usize; 4], [f32; 4])> {
        (0..n * s)
            .map(|o| {
                let u = (o as f32 + 0.5) / s as f32 - 0.5;
                let i = u.floor();
                let t = u - i;
                let idx = [0, 1, 2, 3].map(|j| (i as isize - 1 + j).clamp(0, n as isize - 1) as usize);
                (idx, [k(1.0 + t), k(t), k(1.0 - t), k(2.0 - t)])
            })
            .collect()
    };
    let (tx, ty) = (taps(w), taps(h));
    let (oh, ow) = (h * s, w * s);
    let mut out = vec![0u8; 3 * oh * ow];
    for c in 0..3 {
        let p = &lr[c * h * w..(c + 1) * h * w];
        let mut hp = vec![0f32; h * ow];
        for y in 0..h {
            for (x, (ix, wx)) in tx.iter().enumerate() {
                hp[y * ow + x] = (0..4).map(|j| wx[j] * p[y * w + ix[j]] as f32).sum();
            }
        }
        for (y, (iy, wy)) in ty.iter().enumerate() {
            for x in 0..ow {
                let v: f32 = (0..4).map(|j| wy[j] * hp[iy[j] * ow + x]).sum();
                out[c * oh * ow + y * ow + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// (a + b) / 2 rounded, per element: an expert halfway between a smooth upscale and the ground truth.
pub fn blend(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(&x, &y)| (x as u16 + y as u16).div_ceil(2) as u8).collect()
}
