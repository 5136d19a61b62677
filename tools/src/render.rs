//! Small drawing kit for the inspection commands: a canvas over `image::RgbImage`, a colormap, a 5x7 bitmap
//! font for labels, and a bar-chart panel. Deliberately dependency-free beyond `image` so the CLI needs no
//! font files or plotting stack.

use image::{Rgb, RgbImage};

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GREY: Rgb<u8> = Rgb([128, 128, 128]);
pub const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);

/// Distinct colours for per-expert series (Tableau 10).
pub const PALETTE: [Rgb<u8>; 8] = [
    Rgb([78, 121, 167]),
    Rgb([242, 142, 43]),
    Rgb([225, 87, 89]),
    Rgb([118, 183, 178]),
    Rgb([89, 161, 79]),
    Rgb([237, 201, 72]),
    Rgb([176, 122, 161]),
    Rgb([255, 157, 167]),
];

/// Inferno-like colormap: t in [0,1] -> black, purple, orange, pale yellow. Perceptually ordered, so larger
/// errors read as brighter even in greyscale prints.
pub fn colormap(t: f32) -> Rgb<u8> {
    const STOPS: [[f32; 3]; 6] = [
        [0.0, 0.0, 4.0],
        [66.0, 10.0, 104.0],
        [147.0, 38.0, 103.0],
        [221.0, 81.0, 58.0],
        [252.0, 165.0, 10.0],
        [252.0, 255.0, 164.0],
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (STOPS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f32;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8;
    }
    Rgb(out)
}

/// Image from a CHW plane set: `c == 3` -> RGB, `c == 1` -> grey. Values are mapped with `to_u8`.
pub fn chw_to_image(data: &[f32], c: usize, h: usize, w: usize, to_u8: impl Fn(f32) -> u8) -> RgbImage {
    let plane = h * w;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        let ch = |k: usize| data.get(k.min(c.saturating_sub(1)) * plane + p).copied().unwrap_or(0.0);
        Rgb([to_u8(ch(0)), to_u8(ch(1)), to_u8(ch(2))])
    })
}

/// A [0,1] float to u8 with rounding, clamping anything out of range (SR outputs overshoot slightly).
pub fn unit_to_u8(v: f32) -> u8 {
    if v.is_finite() {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    } else {
        0
    }
}

/// Heatmap of a single plane through [`colormap`], with `lo..hi` mapped to the full range.
pub fn heatmap(plane: &[f32], h: usize, w: usize, lo: f32, hi: f32) -> RgbImage {
    let span = (hi - lo).max(f32::EPSILON);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = plane.get(y as usize * w + x as usize).copied().unwrap_or(0.0);
        colormap((v - lo) / span)
    })
}

/// Nearest-neighbour resize: keeps pixels visible as blocks, which is the honest way to show an LR patch.
pub fn resize_nearest(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == 0 || img.height() == 0 {
        return RgbImage::from_pixel(w, h, BLACK);
    }
    RgbImage::from_fn(w, h, |x, y| {
        let sx = (x as u64 * img.width() as u64 / w.max(1) as u64) as u32;
        let sy = (y as u64 * img.height() as u64 / h.max(1) as u64) as u32;
        *img.get_pixel(sx.min(img.width() - 1), sy.min(img.height() - 1))
    })
}

/// The value at quantile `q` (0..=1) of `v` (which gets sorted). NaNs sort last; empty -> NaN.
pub fn quantile(v: &mut [f32], q: f64) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    // Linear interpolation between closest ranks, as numpy's default.
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let f = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * f
}

/// The canvas and its 5x7 font live in the trainer, which draws the training curves with them.
pub use srcache_trainer::plot::{text_height, text_width, Canvas};

/// One histogram panel: `counts` as bars over `[lo, hi]`, a title, and the range printed under the axis.
pub struct HistPanel<'a> {
    pub title: &'a str,
    pub counts: &'a [u64],
    pub lo: f32,
    pub hi: f32,
    pub color: Rgb<u8>,
    /// Optional vertical marker (e.g. the mean), in value units.
    pub marker: Option<f32>,
}

/// Draws a histogram panel into `canvas` at (x, y) of size (w, h). Counts are scaled to the panel's own max.
pub fn draw_hist_panel(canvas: &mut Canvas, x: i64, y: i64, w: i64, h: i64, p: &HistPanel<'_>) {
    let s = 2;
    let title_h = text_height(s) + 6;
    let axis_h = text_height(s) + 6;
    canvas.text(x + 4, y + 3, p.title, s, WHITE);
    let (px, py, pw, ph) = (x + 4, y + title_h, w - 8, h - title_h - axis_h);
    canvas.fill_rect(px, py, pw, ph, Rgb([36, 36, 42]));
    let max = p.counts.iter().copied().max().unwrap_or(0).max(1);
    let n = p.counts.len().max(1) as i64;
    for (i, &c) in p.counts.iter().enumerate() {
        let x0 = px + i as i64 * pw / n;
        let x1 = px + (i as i64 + 1) * pw / n;
        let bh = (c as f64 / max as f64 * (ph - 2) as f64).round() as i64;
        canvas.fill_rect(x0, py + ph - bh, (x1 - x0 - 1).max(1), bh, p.color);
    }
    if let Some(m) = p.marker {
        let span = (p.hi - p.lo).max(f32::EPSILON);
        let mx = px + (((m - p.lo) / span).clamp(0.0, 1.0) * (pw - 1) as f32) as i64;
        canvas.fill_rect(mx, py, 1, ph, WHITE);
    }
    canvas.fill_rect(px, py + ph, pw, 1, GREY);
    let lo = format!("{:.2}", p.lo);
    let hi = format!("{:.2}", p.hi);
    canvas.text(px, py + ph + 4, &lo, s, GREY);
    canvas.text(px + pw - text_width(&hi, s), py + ph + 4, &hi, s, GREY);
}

/// Counts of `values` in `bins` equal bins over `[lo, hi]` (values outside are clamped into the end bins).
pub fn histogram(values: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<u64> {
    let mut counts = vec![0u64; bins.max(1)];
    let span = (hi - lo).max(f32::EPSILON);
    for &v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / span) * bins as f32).floor();
        let b = (b.max(0.0) as usize).min(counts.len() - 1);
        counts[b] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colormap_is_monotonic_in_brightness() {
        let lum = |c: Rgb<u8>| c.0.iter().map(|&v| v as u32).sum::<u32>();
        let mut prev = 0;
        for i in 0..=20 {
            let l = lum(colormap(i as f32 / 20.0));
            assert!(l >= prev, "colormap gets darker at {i}");
            prev = l;
        }
        assert_eq!(colormap(f32::NAN), colormap(0.0));
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), 2.5);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut v, 1.0), 4.0);
    }

    #[test]
    fn histogram_clamps_into_end_bins() {
        let c = histogram(&[-1.0, 0.1, 0.6, 2.0, f32::NAN], 2, 0.0, 1.0);
        assert_eq!(c, vec![2, 2]);
    }

    #[test]
    fn text_draws_pixels_and_reports_width() {
        let mut c = Canvas::new(64, 16, BLACK);
        let w = c.text(1, 1, "Hi", 1, WHITE);
        assert_eq!(w, text_width("Hi", 1));
        assert!(c.img.pixels().any(|p| *p == WHITE));
    }
}
