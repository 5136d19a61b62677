//! All of srcache's drawing, dependency-free over `image::RgbImage`: a canvas with a 5x7 bitmap font, lines,
//! line-chart panels (the trainer's curves.png), and the inspection kit (colormap, error heatmaps, histogram
//! panels) the CLI's contact sheets and `stats` use. One module for the trainer and the CLI; a plotting crate
//! (plotters) was not worth its font and rendering dependencies for labelled line and bar charts.

use crate::error::{Result, TrainerError};
use image::{Rgb, RgbImage};
use std::path::Path;

/// An RGB canvas with clipped drawing primitives.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(w: u32, h: u32, bg: Rgb<u8>) -> Self {
        Canvas { img: RgbImage::from_pixel(w, h, bg) }
    }

    pub fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u64) < self.img.width() as u64 && (y as u64) < self.img.height() as u64 {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }

    pub fn blit(&mut self, src: &RgbImage, x: i64, y: i64) {
        for (sx, sy, p) in src.enumerate_pixels() {
            self.put(x + sx as i64, y + sy as i64, *p);
        }
    }

    /// A straight line `thick` pixels wide; `dash` > 0 draws `dash` pixels on, `dash` off.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), thick: i64, dash: usize, c: Rgb<u8>) {
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for k in 0..=n {
            if dash > 0 && (k / dash) % 2 == 1 {
                continue;
            }
            let t = k as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            self.fill_rect(x.round() as i64 - thick / 2, y.round() as i64 - thick / 2, thick, thick, c);
        }
    }

    /// Draws `text` with the 5x7 font, `scale` pixels per font pixel; returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) -> i64 {
        let mut cx = x;
        for ch in text.chars() {
            let rows = glyph(ch);
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0x10 >> rx) != 0 {
                        self.fill_rect(cx + rx as i64 * scale, y + ry as i64 * scale, scale, scale, c);
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }
}

/// Pixel width of `text` at `scale` (see [`Canvas::text`]).
pub fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * 6 * scale
}

/// Height of one text line at `scale`.
pub fn text_height(scale: i64) -> i64 {
    7 * scale
}

/// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Lowercase is drawn as uppercase; unknown -> '?'.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        ' ' => [0, 0, 0, 0, 0, 0, 0],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '|' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    }
}

pub const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const AXIS_GREY: Rgb<u8> = Rgb([110, 110, 110]);

/// Distinct line colours (Tableau 10), in the order series are given.
pub const SERIES_COLORS: [Rgb<u8>; 6] =
    [Rgb([78, 121, 167]), Rgb([242, 142, 43]), Rgb([89, 161, 79]), Rgb([225, 87, 89]), Rgb([176, 122, 161]), Rgb([118, 183, 178])];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Line,
    /// A 1-pixel line, for dense noisy traces drawn under a heavier summary line.
    Thin,
    /// Line through the points plus a square marker at each (sparse series such as validation).
    Markers,
    /// A dashed horizontal reference at the first point's y, across the whole x range.
    Reference,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: Rgb<u8>,
    pub style: Style,
    /// (x, y) in data units; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One chart: title, axis labels, optional log10 y axis, its series; `empty` is shown when nothing is plotted.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub empty: String,
}

/// "Nice" tick positions (1, 2, 5 × 10^k steps) covering [lo, hi] with about `n` ticks.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return if lo.is_finite() { vec![lo] } else { Vec::new() };
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Ticks for a log10 axis whose data span is [lo, hi] in log10 units: 1, 2, 5 × 10^k inside the span.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    for k in (lo.floor() as i64)..=(hi.ceil() as i64) {
        for m in [1.0f64, 2.0, 5.0] {
            let t = (m * 10f64.powi(k as i32)).log10();
            if t >= lo - 1e-9 && t <= hi + 1e-9 {
                v.push(t);
            }
        }
    }
    if v.len() < 2 {
        return nice_ticks(lo, hi, 4);
    }
    v
}

/// Short tick label: 12000 -> "12K", 0.0200 -> "0.02", 31.25 -> "31.25", 35.0 -> "35".
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a > 0.0 && a < 1e-3 {
        return fmt_sci(v);
    }
    if a >= 10_000.0 && (v / 1000.0).fract() == 0.0 {
        return format!("{}K", (v / 1000.0) as i64);
    }
    if a >= 100.0 {
        return format!("{}", v.round() as i64);
    }
    let digits = if a >= 1.0 || a == 0.0 { 2 } else { (-a.log10()).ceil() as usize + 2 };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Scientific tick label, rounded first so 3 × 2e-4 prints as "6e-4", not "6.000000000000001e-4".
pub fn fmt_sci(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.2e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
    format!("{m}e{e}")
}

/// Draws `panel` into the box (x, y, w, h) of `c`, with x from `x_range`.
pub fn draw_panel(c: &mut Canvas, x: i64, y: i64, w: i64, h: i64, panel: &Panel, x_range: (f64, f64)) {
    let ts = 2;
    c.text(x + 10, y + 8, &panel.title, ts, INK);
    let y_label_y = y + 8 + text_height(ts) + 8;
    c.text(x + 10, y_label_y, &panel.y_label, 1, AXIS_GREY);
    let (left, right, top, bottom) = (x + 62, x + w - 16, y_label_y + text_height(1) + 8, y + h - 44);
    let (pw, ph) = (right - left, bottom - top);
    let tf = |v: f64| {
        if panel.log_y {
            if v > 0.0 {
                v.log10()
            } else {
                f64::NAN
            }
        } else {
            v
        }
    };
    let pts: Vec<(f64, f64)> =
        panel.series.iter().flat_map(|s| s.points.iter().map(|p| (p.0, tf(p.1)))).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let (x0, mut x1) = x_range;
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (mut y0, mut y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if pts.is_empty() {
        (y0, y1) = (0.0, 1.0);
    }
    // A little head-room, and a minimum span so a flat series does not divide by zero.
    // The floor is relative in linear mode, so tiny quantities (a learning rate of 1e-4) keep their shape.
    let floor = if panel.log_y { 0.02 } else { (y0.abs().max(y1.abs()) * 0.01).max(1e-12) };
    let span = (y1 - y0).max(floor);
    let mid = (y0 + y1) / 2.0;
    (y0, y1) = (mid - span * 0.55, mid + span * 0.55);
    let sx = |v: f64| left as f64 + (v - x0) / (x1 - x0) * pw as f64;
    let sy = |v: f64| bottom as f64 - (v - y0) / (y1 - y0) * ph as f64;
    let yt = if panel.log_y { log_ticks(y0, y1) } else { nice_ticks(y0, y1, 5) };
    // One notation per axis: a learning-rate axis reads 0, 5e-4, 1e-3 rather than 0, 5e-4, 0.001.
    let y_value = |t: f64| if panel.log_y { 10f64.powf(t) } else { t };
    let sci = yt.iter().map(|&t| y_value(t).abs()).fold(0.0, f64::max) < 1e-2;
    for &t in &yt {
        let py = sy(t).round() as i64;
        c.fill_rect(left, py, pw, 1, GRID);
        let label = if sci { fmt_sci(y_value(t)) } else { fmt_tick(y_value(t)) };
        c.text(left - 6 - text_width(&label, 1), py - 3, &label, 1, AXIS_GREY);
    }
    for &t in &nice_ticks(x0, x1, 6) {
        let px = sx(t).round() as i64;
        c.fill_rect(px, top, 1, ph, GRID);
        c.fill_rect(px, bottom, 1, 4, AXIS_GREY);
        let label = fmt_tick(t);
        c.text(px - text_width(&label, 1) / 2, bottom + 8, &label, 1, AXIS_GREY);
    }
    c.fill_rect(left, bottom, pw + 1, 1, INK);
    c.fill_rect(left, top, 1, ph + 1, INK);
    c.text(left + (pw - text_width(&panel.x_label, 1)) / 2, bottom + 24, &panel.x_label, 1, AXIS_GREY);
    if pts.is_empty() {
        c.text(left + (pw - text_width(&panel.empty, 1)) / 2, top + ph / 2, &panel.empty, 1, AXIS_GREY);
        return;
    }
    let clamp = |p: (f64, f64)| (p.0.clamp(left as f64, right as f64), p.1.clamp(top as f64, bottom as f64));
    let mut drawn: Vec<(f64, f64)> = Vec::new();
    for s in &panel.series {
        let sp: Vec<(f64, f64)> =
            s.points.iter().map(|p| (p.0, tf(p.1))).filter(|p| p.0.is_finite() && p.1.is_finite()).map(|p| clamp((sx(p.0), sy(p.1)))).collect();
        match s.style {
            Style::Reference => {
                if let Some(p) = sp.first() {
                    c.line((left as f64, p.1), (right as f64, p.1), 1, 6, s.color);
                    drawn.extend((0..=20).map(|k| (left as f64 + (right - left) as f64 * k as f64 / 20.0, p.1)));
                }
            }
            Style::Line | Style::Markers | Style::Thin => {
                let thick = if s.style == Style::Thin { 1 } else { 2 };
                for pair in sp.windows(2) {
                    c.line(pair[0], pair[1], thick, 0, s.color);
                }
                // Sample along the segments too: a legend must not hide a line between two distant points.
                for pair in sp.windows(2) {
                    let n = ((pair[1].0 - pair[0].0).abs().max((pair[1].1 - pair[0].1).abs()) / 4.0).ceil().max(1.0) as usize;
                    drawn.extend((0..n).map(|k| {
                        let t = k as f64 / n as f64;
                        (pair[0].0 + (pair[1].0 - pair[0].0) * t, pair[0].1 + (pair[1].1 - pair[0].1) * t)
                    }));
                }
                drawn.extend(sp.last().copied());
                if s.style == Style::Markers || sp.len() == 1 {
                    for p in &sp {
                        c.fill_rect(p.0.round() as i64 - 3, p.1.round() as i64 - 3, 7, 7, s.color);
                    }
                }
            }
        }
    }
    // Legend on a white box, in whichever inside corner covers the fewest plotted points (top right first).
    let labelled: Vec<&Series> = panel.series.iter().filter(|s| !s.label.is_empty()).collect();
    if labelled.len() > 1 || labelled.iter().any(|s| s.style == Style::Reference) {
        let lw = labelled.iter().map(|s| text_width(&s.label, 1)).max().unwrap_or(0) + 30;
        let lh = labelled.len() as i64 * 12;
        let corners = [(right - lw - 6, top + 6), (right - lw - 6, bottom - lh - 6), (left + 8, top + 6), (left + 8, bottom - lh - 6)];
        let covered = |&(lx, ly): &(i64, i64)| {
            let (x0, x1, y0, y1) = ((lx - 10) as f64, (lx + lw + 10) as f64, (ly - 10) as f64, (ly + lh + 10) as f64);
            drawn.iter().filter(|p| p.0 >= x0 && p.0 <= x1 && p.1 >= y0 && p.1 <= y1).count()
        };
        let (lx, ly) = corners.iter().copied().min_by_key(covered).unwrap_or(corners[0]);
        c.fill_rect(lx - 4, ly - 4, lw + 8, lh + 6, Rgb([255, 255, 255]));
        for (i, s) in labelled.iter().enumerate() {
            let yy = ly + i as i64 * 12 + 3;
            let dash = if s.style == Style::Reference { 4 } else { 0 };
            let thick = if s.style == Style::Thin { 1 } else { 2 };
            c.line((lx as f64, yy as f64), ((lx + 20) as f64, yy as f64), thick, dash, s.color);
            c.text(lx + 26, yy - 3, &s.label, 1, INK);
        }
    }
}

/// Panels side by side, each `pw`×`ph`, sharing the x range, saved as a PNG.
pub fn save_panels(panels: &[Panel], x_range: (f64, f64), pw: u32, ph: u32, png: &Path) -> Result<()> {
    let mut c = Canvas::new(pw * panels.len().max(1) as u32, ph, Rgb([255, 255, 255]));
    for (i, p) in panels.iter().enumerate() {
        draw_panel(&mut c, i as i64 * pw as i64, 0, pw as i64, ph as i64, p, x_range);
    }
    srcache_ingest::write_png(png, &c.img).map_err(|e| TrainerError::Image { path: png.to_path_buf(), why: srcache_formats::error_chain(&e) })
}

// ------------------------------------------------------------------------ inspection images (CLI)
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
    const STOPS: [[f32; 3]; 6] =
        [[0.0, 0.0, 4.0], [66.0, 10.0, 104.0], [147.0, 38.0, 103.0], [221.0, 81.0, 58.0], [252.0, 165.0, 10.0], [252.0, 255.0, 164.0]];
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
mod inspection_tests {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(nice_ticks(0.0, 100.0, 5), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let t: Vec<String> = nice_ticks(31.13, 31.87, 4).into_iter().map(fmt_tick).collect();
        assert_eq!(t, ["31.2", "31.4", "31.6", "31.8"]);
        let lt = log_ticks(-2.2, -0.9);
        assert!(lt.len() >= 3 && lt.iter().all(|t| (-2.2..=-0.9).contains(t)), "{lt:?}");
        assert_eq!(fmt_tick(12000.0), "12K");
        assert_eq!(fmt_tick(0.02), "0.02");
        assert_eq!(fmt_tick(31.25), "31.25");
        assert_eq!(fmt_tick(2400.0), "2400");
        assert_eq!(fmt_tick(3.0 * 2e-4), "6e-4");
        assert_eq!(fmt_tick(2.5e-5), "2.5e-5");
    }
}
