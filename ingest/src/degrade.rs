//! Seeded degradation variants for "realistic LR": blur on HR before the bicubic downscale, then noise and
//! JPEG on the LR. A variant is written `clean` or as `+`-joined steps: `blur:1.2`, `aniso:2.0,0.8,30`
//! (σx, σy, angle°), `noise:5` (σ on 0..255), `jpeg:75`. Randomness (noise) comes from
//! (seed, image stem, variant), so a variant is reproducible and independent of worker scheduling.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{IngestError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Blur { sx: f32, sy: f32, theta_deg: f32 },
    Noise { sigma: f32 },
    Jpeg { quality: u8 },
}

/// A named degradation variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub steps: Vec<Step>,
}

impl Variant {
    pub fn clean() -> Self {
        Variant { name: "clean".into(), steps: Vec::new() }
    }

    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| IngestError::Config { what: format!("variant {spec:?}: {why}") };
        if spec == "clean" {
            return Ok(Self::clean());
        }
        let mut steps = Vec::new();
        for part in spec.split('+') {
            let (kind, args) = part.split_once(':').ok_or_else(|| bad("expected kind:args"))?;
            let nums: Vec<f32> =
                args.split(',').map(|a| a.trim().parse::<f32>()).collect::<std::result::Result<_, _>>().map_err(|_| bad("bad number"))?;
            steps.push(match (kind, nums.as_slice()) {
                ("blur", [s]) if *s > 0.0 => Step::Blur { sx: *s, sy: *s, theta_deg: 0.0 },
                ("aniso", [sx, sy, t]) if *sx > 0.0 && *sy > 0.0 => Step::Blur { sx: *sx, sy: *sy, theta_deg: *t },
                ("noise", [s]) if *s >= 0.0 => Step::Noise { sigma: *s },
                ("jpeg", [q]) if (1.0..=100.0).contains(q) => Step::Jpeg { quality: *q as u8 },
                _ => return Err(bad("unknown step or wrong arguments (blur:σ, aniso:σx,σy,deg, noise:σ, jpeg:q)")),
            });
        }
        // Names go into sample ids, so keep them filename-safe.
        let name = spec.replace([':', ','], "").replace('+', "-");
        Ok(Variant { name, steps })
    }

    /// Applies the blur steps to HR (before downscaling).
    pub fn apply_hr(&self, hr: &RgbImage) -> RgbImage {
        let mut img = hr.clone();
        for s in &self.steps {
            if let Step::Blur { sx, sy, theta_deg } = s {
                img = gaussian_blur(&img, *sx, *sy, *theta_deg);
            }
        }
        img
    }

    /// Applies noise and JPEG to LR (after downscaling).
    pub fn apply_lr(&self, lr: &RgbImage, seed: u64, stem: &str) -> Result<RgbImage> {
        let mut img = lr.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(stem) ^ fnv(&self.name).rotate_left(17));
        for s in &self.steps {
            match s {
                Step::Noise { sigma } => {
                    for v in img.iter_mut() {
                        // Box-Muller from two uniforms: no extra crate needed for a Gaussian.
                        let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
                        let n = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                        *v = (*v as f64 + n * *sigma as f64).round().clamp(0.0, 255.0) as u8;
                    }
                }
                Step::Jpeg { quality } => img = jpeg_roundtrip(&img, *quality)?,
                Step::Blur { .. } => {}
            }
        }
        Ok(img)
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> Result<RgbImage> {
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality);
    img.write_with_encoder(enc).map_err(|e| IngestError::Config { what: format!("jpeg encode: {e}") })?;
    let dec =
        image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg).map_err(|e| IngestError::Config { what: format!("jpeg decode: {e}") })?;
    Ok(dec.into_rgb8())
}

/// Anisotropic Gaussian blur with a rotated 2-D kernel (radius 3σ), symmetric borders.
fn gaussian_blur(img: &RgbImage, sx: f32, sy: f32, theta_deg: f32) -> RgbImage {
    let r = (3.0 * sx.max(sy)).ceil() as i64;
    let (c, s) = (theta_deg.to_radians().cos(), theta_deg.to_radians().sin());
    let mut k = Vec::new();
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (dx as f32, dy as f32);
            let (u, v) = (c * x + s * y, -s * x + c * y);
            k.push((-(u * u) / (2.0 * sx * sx) - (v * v) / (2.0 * sy * sy)).exp());
        }
    }
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mirror = |i: i64, n: i64| -> u32 {
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
        }
        i as u32
    };
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let mut acc = [0f32; 3];
        let mut ki = 0;
        for dy in -r..=r {
            for dx in -r..=r {
                let p = img.get_pixel(mirror(x as i64 + dx, w), mirror(y as i64 + dy, h)).0;
                for ch in 0..3 {
                    acc[ch] += k[ki] * p[ch] as f32;
                }
                ki += 1;
            }
        }
        image::Rgb(acc.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_name() {
        let v = Variant::parse("blur:1.2+noise:5+jpeg:75").unwrap_or_else(|_| Variant::clean());
        assert_eq!(v.steps.len(), 3);
        assert_eq!(v.name, "blur1.2-noise5-jpeg75");
        assert!(Variant::parse("wobble:3").is_err());
    }

    #[test]
    fn noise_is_seeded() {
        let img = RgbImage::from_pixel(16, 16, image::Rgb([128, 128, 128]));
        let v = Variant::parse("noise:10").unwrap_or_else(|_| Variant::clean());
        let a = v.apply_lr(&img, 7, "x").ok();
        let b = v.apply_lr(&img, 7, "x").ok();
        let c = v.apply_lr(&img, 8, "x").ok();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.as_ref(), Some(&img));
    }
}
