//! The patch grid on LR images (BasicSR `extract_subimages` rule) and flat-patch filtering.

use image::RgbImage;
use srcache_formats::PatchBox;

/// The default LR patch side, for every way in (`ingest patches`, `cache`, `cache.toml`).
pub const DEFAULT_PATCH: u32 = 64;

/// Patch size and stride in LR pixels; patches whose LR luma variance is below `flat_threshold` are skipped
/// (they teach a fusion network nothing and waste cache space).
///
/// `stride: None` means "the patch size" (adjacent patches, no overlap and no gaps). It is the one default for
/// the CLI and TOML alike, resolved only by [`PatchConfig::stride`]: a config that sets `patch = 32` and no
/// stride gets stride 32, never a stride left over from another patch size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PatchConfig {
    pub size: u32,
    pub stride: Option<u32>,
    pub flat_threshold: Option<f32>,
}

impl Default for PatchConfig {
    fn default() -> Self {
        PatchConfig { size: DEFAULT_PATCH, stride: None, flat_threshold: None }
    }
}

/// Largest patch side in LR pixels: no decodable image (see `scan::MAX_SIDE`) has a larger LR, and
/// `size · scale` stays far from overflowing.
pub const MAX_PATCH: u32 = crate::scan::MAX_SIDE;

impl PatchConfig {
    /// The stride in effect: the one given, else the patch size.
    pub fn stride(&self) -> u32 {
        self.stride.unwrap_or(self.size)
    }

    /// A zero size or stride is refused rather than read as "no patches" or "stride 1".
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |what: String| Err(crate::IngestError::Config { what });
        if !(1..=MAX_PATCH).contains(&self.size) {
            return bad(format!("patch size {} is outside 1..={MAX_PATCH} (LR pixels)", self.size));
        }
        if self.stride == Some(0) {
            return bad("patch stride 0: must be at least 1 (LR pixels)".into());
        }
        if let Some(t) = self.flat_threshold {
            if !t.is_finite() || t < 0.0 {
                return bad(format!("flat threshold {t} must be a finite number ≥ 0"));
            }
        }
        Ok(())
    }
}

/// Window starts along one axis: every `stride` from 0, plus one window flush with the end when the grid
/// leaves a remainder (BasicSR's rule with thresh_size = 0). Empty when `len < size`.
pub fn starts(len: u32, size: u32, stride: u32) -> Vec<u32> {
    if len < size || size == 0 {
        return Vec::new();
    }
    let stride = stride.max(1);
    let mut v: Vec<u32> = (0..=(len - size)).step_by(stride as usize).collect();
    if let Some(&last) = v.last() {
        if last + size < len {
            v.push(len - size);
        }
    }
    v
}

/// All patch boxes of an LR image, row-major.
pub fn grid(lr_w: u32, lr_h: u32, cfg: &PatchConfig) -> Vec<PatchBox> {
    let mut out = Vec::new();
    let stride = cfg.stride();
    for &y in &starts(lr_h, cfg.size, stride) {
        for &x in &starts(lr_w, cfg.size, stride) {
            out.push(PatchBox { x, y, w: cfg.size, h: cfg.size });
        }
    }
    out
}

/// Variance of the luma of a patch (0..255 scale).
pub fn luma_variance(img: &RgbImage, b: &PatchBox) -> f32 {
    let mut sum = 0f64;
    let mut sq = 0f64;
    for y in b.y..b.y + b.h {
        for x in b.x..b.x + b.w {
            let p = img.get_pixel(x, y).0;
            let l = 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            sum += l;
            sq += l * l;
        }
    }
    let n = (b.w * b.h) as f64;
    let m = sum / n;
    (sq / n - m * m) as f32
}

/// Crops `b` (scaled by `scale`) out of `img`.
pub fn crop(img: &RgbImage, b: &PatchBox, scale: u32) -> RgbImage {
    // Row memcpy: `SubImage::to_image` goes pixel by pixel, which showed up in ingest profiles.
    let (x, y, w, h) = ((b.x * scale) as usize, (b.y * scale) as usize, (b.w * scale) as usize, (b.h * scale) as usize);
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if x + w > iw || y + h > ih {
        // Out of range boxes keep `crop_imm`'s clamping behaviour.
        return image::imageops::crop_imm(img, x as u32, y as u32, w as u32, h as u32).to_image();
    }
    let raw = img.as_raw();
    let mut out = Vec::with_capacity(w * h * 3);
    for row in y..y + h {
        let start = (row * iw + x) * 3;
        out.extend_from_slice(&raw[start..start + w * 3]);
    }
    RgbImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
}

/// Start of the `win`-pixel window along an axis of `len` pixels that gives a patch at `start` its context:
/// centred on the patch where it fits, shifted to lie inside the image at its borders (the rule of
/// `srcache_experts::tiling::starts`, whose last tile is flush with the end), so an expert sees an image
/// border exactly where whole-image inference shows it one. 0 when the image is narrower than the window.
pub fn halo_start(len: u32, start: u32, win: u32, halo: u32) -> u32 {
    if len <= win {
        return 0;
    }
    start.saturating_sub(halo).min(len - win)
}

/// The expert input of patch `b` with `halo` LR pixels of context each side, cut from the whole LR image `img`:
/// a `(b.w + 2·halo)`×`(b.h + 2·halo)` window placed by [`halo_start`], and the patch's offset inside it.
/// Along an axis shorter than the window (an image barely larger than a patch) the window is the whole axis,
/// its far side filled by repeating the last pixel, so every window of a run has one size.
pub fn crop_with_halo(img: &RgbImage, b: &PatchBox, halo: u32) -> (RgbImage, (u32, u32)) {
    let (ww, wh) = (b.w + 2 * halo, b.h + 2 * halo);
    let (iw, ih) = (img.width(), img.height());
    if iw == 0 || ih == 0 {
        return (RgbImage::new(ww, wh), (0, 0));
    }
    let (x0, y0) = (halo_start(iw, b.x, ww, halo), halo_start(ih, b.y, wh, halo));
    let raw = img.as_raw();
    let cols = ww.min(iw - x0) as usize;
    let mut out = Vec::with_capacity((ww * wh * 3) as usize);
    for r in 0..wh {
        let sy = (y0 + r).min(ih - 1) as usize;
        let row = (sy * iw as usize + x0 as usize) * 3;
        out.extend_from_slice(&raw[row..row + cols * 3]);
        let last = [raw[row + cols * 3 - 3], raw[row + cols * 3 - 2], raw[row + cols * 3 - 1]];
        for _ in cols..ww as usize {
            out.extend_from_slice(&last);
        }
    }
    let img = RgbImage::from_raw(ww, wh, out).unwrap_or_else(|| RgbImage::new(ww, wh));
    (img, (b.x - x0, b.y - y0))
}

/// The stable id of a patch: `<stem>_<x>_<y>_<variant>` (LR coordinates).
pub fn patch_id(stem: &str, b: &PatchBox, variant: &str) -> String {
    format!("{stem}_{}_{}_{variant}", b.x, b.y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basicsr_last_window_rule() {
        assert_eq!(starts(10, 4, 3), vec![0, 3, 6]);
        assert_eq!(starts(11, 4, 3), vec![0, 3, 6, 7]);
        assert_eq!(starts(4, 4, 3), vec![0]);
        assert!(starts(3, 4, 3).is_empty());
    }

    #[test]
    fn halo_window_is_centred_inside_and_shifted_at_borders() {
        let img = RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8, y as u8, 7]));
        // Interior: centred, the patch at offset (halo, halo).
        let (w, off) = crop_with_halo(&img, &PatchBox { x: 10, y: 6, w: 8, h: 8 }, 4);
        assert_eq!((w.dimensions(), off), ((16, 16), (4, 4)));
        assert_eq!(w.get_pixel(4, 4).0, [10, 6, 7]);
        // At the top-left and bottom-right borders the window shifts inside the image.
        let (_, off) = crop_with_halo(&img, &PatchBox { x: 0, y: 0, w: 8, h: 8 }, 4);
        assert_eq!(off, (0, 0));
        let (w, off) = crop_with_halo(&img, &PatchBox { x: 32, y: 12, w: 8, h: 8 }, 4);
        assert_eq!(off, (8, 8));
        assert_eq!(w.get_pixel(8 + 7, 8 + 7).0, [39, 19, 7]);
        // An axis shorter than the window: the whole axis, then the last pixel repeated.
        let (w, off) = crop_with_halo(&img, &PatchBox { x: 0, y: 6, w: 8, h: 8 }, 8);
        assert_eq!((w.dimensions(), off.1), ((24, 24), 6));
        assert_eq!(w.get_pixel(3, 23).0, [3, 19, 7]);
    }
}
