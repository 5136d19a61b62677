//! All of srcache's drawing, one module for the trainer and the CLI: line charts (the run's curves), PSNR
//! histograms (`stats --histogram`) and contact sheets (`dump`, `demo`, the validation sheet). Charts are
//! drawn with plotters twice, on its bitmap backend (PNG) and its SVG backend (a vector file beside the PNG,
//! for papers): axes with ticks and units, legends, mixed-case text. Text is DejaVu Sans, shipped in
//! `trainer/assets/` and compiled in (plotters' ab_glyph renderer), so drawing needs no fontconfig or system
//! font and looks the same on every machine. The inspection kit (colormap, heatmaps, quantiles, histogram
//! counts) is plain pixel and number code beside it.

use crate::error::{Result, TrainerError};
use image::{Rgb, RgbImage};
use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static FONT_TTF: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The family every text element names: DejaVu Sans in the PNGs; SVG viewers without it use a sans-serif.
pub const FONT_FAMILY: &str = "DejaVu Sans, sans-serif";

fn ensure_font() -> std::result::Result<(), String> {
    static OK: OnceLock<bool> = OnceLock::new();
    if *OK.get_or_init(|| plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_TTF).is_ok()) {
        Ok(())
    } else {
        Err("the shipped DejaVu Sans font does not parse".into())
    }
}

/// The axis look every chart shares: grey tick labels, ink axis titles and axes, a light grid.
trait HouseStyle {
    fn house_style(&mut self) -> &mut Self;
}

impl<X: Ranged, Y: Ranged, DB: DrawingBackend> HouseStyle for MeshStyle<'_, '_, X, Y, DB> {
    fn house_style(&mut self) -> &mut Self {
        self.label_style(font(12, AXIS_GREY)).axis_desc_style(font(13, INK)).bold_line_style(rgb(GRID)).light_line_style(WHITE).axis_style(rgb(INK))
    }
}

fn font(size: u32, c: Rgb<u8>) -> TextStyle<'static> {
    let mut t = TextStyle::from((FONT_FAMILY, size as f64).into_font());
    t.color = rgb(c).to_backend_color();
    t
}

fn rgb(c: Rgb<u8>) -> RGBColor {
    RGBColor(c.0[0], c.0[1], c.0[2])
}

/// Where the SVG twin of a PNG goes: the same path with `.svg`.
pub fn svg_path(png: &Path) -> PathBuf {
    png.with_extension("svg")
}

type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Something drawable on any plotters backend (so one drawing makes both the PNG and the SVG).
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB>;
}

fn image_err(path: &Path, why: impl std::fmt::Display) -> TrainerError {
    TrainerError::Image { path: path.to_path_buf(), why: why.to_string() }
}

/// Draws `fig` into an RGB image.
fn render<F: Figure>(fig: &F, path: &Path) -> Result<RgbImage> {
    ensure_font().map_err(|e| image_err(path, e))?;
    let (w, h) = fig.size();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| image_err(path, e))?;
        root.present().map_err(|e| image_err(path, e))?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| image_err(path, "bitmap buffer has the wrong size"))
}

/// Draws `fig` as an SVG document.
fn render_svg<F: Figure>(fig: &F, path: &Path) -> Result<String> {
    ensure_font().map_err(|e| image_err(path, e))?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, fig.size()).into_drawing_area();
        fig.draw(&root).map_err(|e| image_err(path, e))?;
        root.present().map_err(|e| image_err(path, e))?;
    }
    Ok(s)
}

/// Writes `img` to `png` atomically.
pub fn write_png(png: &Path, img: &RgbImage) -> Result<()> {
    srcache_ingest::write_png(png, img).map_err(|e| image_err(png, srcache_formats::error_chain(&e)))
}

/// The PNG path must not be its own SVG twin (`--out plot.svg` would be overwritten by the SVG).
fn check_png_path(png: &Path) -> Result<()> {
    if svg_path(png) == png {
        return Err(image_err(png, "is where the SVG twin goes: give the PNG path (e.g. plot.png); the SVG is written beside it"));
    }
    Ok(())
}

/// Writes the PNG and its SVG twin; returns the bitmap.
fn save_figure<F: Figure>(fig: &F, png: &Path) -> Result<RgbImage> {
    check_png_path(png)?;
    let img = render(fig, png)?;
    let svg = render_svg(fig, png)?;
    write_png(png, &img)?;
    let sp = svg_path(png);
    srcache_formats::write_atomic(&sp, svg.as_bytes())?;
    Ok(img)
}

/// PNG bytes of an image (TensorBoard image summaries, tiles embedded in SVG sheets).
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| image_err(Path::new("<memory>"), e))?;
    Ok(buf.into_inner())
}

// ------------------------------------------------------------------------------------------ line charts
pub const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS_GREY: Rgb<u8> = Rgb([90, 90, 90]);

/// Distinct line colours (Tableau 10), in the order series are given.
pub const SERIES_COLORS: [Rgb<u8>; 6] =
    [Rgb([78, 121, 167]), Rgb([242, 142, 43]), Rgb([89, 161, 79]), Rgb([225, 87, 89]), Rgb([176, 122, 161]), Rgb([118, 183, 178])];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Line,
    /// A 1-pixel line, for dense noisy traces drawn under a heavier summary line.
    Thin,
    /// Line through the points plus a marker at each (sparse series such as validation).
    Markers,
    /// A dashed horizontal reference at the first point's y, across the whole x range.
    Reference,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: Rgb<u8>,
    pub style: Style,
    /// (x, y) in data units; non-finite points (and, on a log axis, y <= 0) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One chart: title, axis labels (with units), optional log10 y axis, its series; `empty` is shown when
/// nothing is plotted.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub empty: String,
}

impl Panel {
    fn plotted(&self, s: &Series) -> Vec<(f64, f64)> {
        s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite() && (!self.log_y || p.1 > 0.0)).collect()
    }

    /// The y range drawn: the data's, with 5% head-room each side and a minimum span so a flat series does
    /// not divide by zero (relative, so a learning rate of 1e-4 keeps its shape); in log10 units on a log axis.
    fn y_range(&self) -> (f64, f64) {
        let tf = |v: f64| if self.log_y { v.log10() } else { v };
        let ys: Vec<f64> = self.series.iter().flat_map(|s| self.plotted(s)).map(|p| tf(p.1)).collect();
        let (lo, hi) = ys.iter().fold((f64::MAX, f64::MIN), |a, &y| (a.0.min(y), a.1.max(y)));
        let (lo, hi) = if ys.is_empty() { (0.0, 1.0) } else { (lo, hi) };
        let floor = if self.log_y { 0.02 } else { (lo.abs().max(hi.abs()) * 0.01).max(1e-12) };
        let span = (hi - lo).max(floor);
        let mid = (lo + hi) / 2.0;
        (mid - span * 0.55, mid + span * 0.55)
    }
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

struct Panels<'a> {
    panels: &'a [Panel],
    x_range: (f64, f64),
    pw: u32,
    ph: u32,
}

impl Figure for Panels<'_> {
    fn size(&self) -> (u32, u32) {
        (self.pw * self.panels.len().max(1) as u32, self.ph)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        for (area, p) in root.split_evenly((1, self.panels.len().max(1))).iter().zip(self.panels) {
            draw_panel(area, p, self.x_range)?;
        }
        Ok(())
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, x_range: (f64, f64)) -> Drawn<DB> {
    let (x0, mut x1) = x_range;
    if x1.partial_cmp(&x0) != Some(std::cmp::Ordering::Greater) {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = p.y_range();
    let mut b = ChartBuilder::on(area);
    b.caption(&p.title, font(17, INK)).margin(10).margin_right(18).x_label_area_size(44).y_label_area_size(72);
    if p.log_y {
        let chart = b.build_cartesian_2d(x0..x1, (10f64.powf(y0)..10f64.powf(y1)).log_scale())?;
        panel_body(chart, p, (x0, x1), (10f64.powf(y0), 10f64.powf(y1)))
    } else {
        let chart = b.build_cartesian_2d(x0..x1, y0..y1)?;
        panel_body(chart, p, (x0, x1), (y0, y1))
    }
}

fn panel_body<'a, DB, Y>(mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>, p: &Panel, xr: (f64, f64), yr: (f64, f64)) -> Drawn<DB>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    // One notation per axis: a learning-rate axis reads 0, 5e-4, 1e-3 rather than 0, 5e-4, 0.001.
    let sci = yr.0.abs().max(yr.1.abs()) < 1e-2;
    let y_fmt = |v: &f64| if sci { fmt_sci(*v) } else { fmt_tick(*v) };
    let x_fmt = |v: &f64| fmt_tick(*v);
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .house_style()
        .draw()?;
    let mut points_drawn: Vec<(f64, f64)> = Vec::new();
    let mut any = false;
    for s in &p.series {
        let pts = p.plotted(s);
        if pts.is_empty() {
            continue;
        }
        any = true;
        let color = rgb(s.color);
        let width = if s.style == Style::Thin { 1 } else { 2 };
        let style = ShapeStyle::from(&color).stroke_width(width);
        let anno = match s.style {
            Style::Reference => {
                let y = pts[0].1;
                points_drawn.extend((0..=20).map(|k| (xr.0 + (xr.1 - xr.0) * k as f64 / 20.0, y)));
                chart.draw_series(DashedLineSeries::new(vec![(xr.0, y), (xr.1, y)], 8, 5, style))?
            }
            Style::Line | Style::Thin | Style::Markers => {
                points_drawn.extend(&pts);
                if s.style == Style::Markers || pts.len() == 1 {
                    chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, color.filled())))?;
                }
                chart.draw_series(LineSeries::new(pts, style))?
            }
        };
        if !s.label.is_empty() {
            anno.label(s.label.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
    }
    if !any {
        let mid = ((xr.0 + xr.1) / 2.0, if p.log_y { (yr.0 * yr.1).sqrt() } else { (yr.0 + yr.1) / 2.0 });
        let style = font(14, AXIS_GREY).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(std::iter::once(Text::new(p.empty.clone(), mid, style)))?;
        return Ok(());
    }
    let labelled: Vec<&Series> = p.series.iter().filter(|s| !s.label.is_empty()).collect();
    if labelled.len() > 1 || labelled.iter().any(|s| s.style == Style::Reference) {
        // The legend goes in whichever inside corner covers the fewest plotted points (top right first).
        let norm = |v: f64, (lo, hi): (f64, f64), log: bool| {
            if log {
                (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
            } else {
                (v - lo) / (hi - lo)
            }
        };
        let unit: Vec<(f64, f64)> = points_drawn.iter().map(|q| (norm(q.0, xr, false), norm(q.1, yr, p.log_y))).collect();
        let corners = [
            (SeriesLabelPosition::UpperRight, (0.55, 1.0), (0.6, 1.0)),
            (SeriesLabelPosition::LowerRight, (0.55, 1.0), (0.0, 0.4)),
            (SeriesLabelPosition::UpperLeft, (0.0, 0.45), (0.6, 1.0)),
            (SeriesLabelPosition::LowerLeft, (0.0, 0.45), (0.0, 0.4)),
        ];
        let covered = |c: &&(SeriesLabelPosition, (f64, f64), (f64, f64))| {
            unit.iter().filter(|q| q.0 >= c.1 .0 && q.0 <= c.1 .1 && q.1 >= c.2 .0 && q.1 <= c.2 .1).count()
        };
        let pos = corners.iter().min_by_key(covered).map(|c| c.0.clone()).unwrap_or(SeriesLabelPosition::UpperRight);
        chart.configure_series_labels().position(pos).label_font(font(12, INK)).background_style(WHITE.mix(0.9)).border_style(rgb(GRID)).draw()?;
    }
    Ok(())
}

/// Panels side by side, each `pw`×`ph`, sharing the x range: `png` and its SVG twin ([`svg_path`]).
pub fn save_panels(panels: &[Panel], x_range: (f64, f64), pw: u32, ph: u32, png: &Path) -> Result<RgbImage> {
    save_figure(&Panels { panels, x_range, pw, ph }, png)
}

// ------------------------------------------------------------------------------------------- histograms
/// One histogram panel: `counts` as bars over `[lo, hi]` (equal bins), a title, axis labels with units, and
/// an optional vertical marker (e.g. the mean, with its legend entry `marker_label`).
pub struct HistPanel<'a> {
    pub title: &'a str,
    pub counts: &'a [u64],
    pub lo: f32,
    pub hi: f32,
    pub color: Rgb<u8>,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub marker: Option<(f32, String)>,
}

struct Histograms<'a> {
    panels: &'a [HistPanel<'a>],
    w: u32,
    ph: u32,
}

impl Figure for Histograms<'_> {
    fn size(&self) -> (u32, u32) {
        (self.w, self.ph * self.panels.len().max(1) as u32)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        for (area, p) in root.split_evenly((self.panels.len().max(1), 1)).iter().zip(self.panels) {
            let (lo, mut hi) = (p.lo as f64, p.hi as f64);
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                hi = lo + 1.0;
            }
            let max = p.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(p.title, font(15, INK))
                .margin(8)
                .margin_right(18)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(lo..hi, 0.0..max * 1.1)?;
            let fmt = |v: &f64| fmt_tick(*v);
            let count_fmt = |v: &f64| if v.fract() == 0.0 { format!("{}", *v as i64) } else { String::new() };
            chart
                .configure_mesh()
                .x_labels(8)
                .y_labels(5)
                .x_desc(p.x_label)
                .y_desc(p.y_label)
                .x_label_formatter(&fmt)
                .y_label_formatter(&count_fmt)
                .house_style()
                .draw()?;
            let n = p.counts.len().max(1) as f64;
            let bw = (hi - lo) / n;
            let color = rgb(p.color);
            // One rectangle per non-empty bin: [lo + i·w, lo + (i+1)·w] × [0, count].
            chart.draw_series(
                p.counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(i, &c)| Rectangle::new([(lo + i as f64 * bw, 0.0), (lo + (i + 1) as f64 * bw, c as f64)], color.filled())),
            )?;
            if let Some((m, label)) = &p.marker {
                let m = (*m as f64).clamp(lo, hi);
                let style = ShapeStyle::from(&rgb(INK)).stroke_width(2);
                chart
                    .draw_series(DashedLineSeries::new(vec![(m, 0.0), (m, max * 1.1)], 6, 4, style))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .label_font(font(12, INK))
                    .background_style(WHITE.mix(0.9))
                    .border_style(rgb(GRID))
                    .draw()?;
            }
        }
        Ok(())
    }
}

/// Histogram panels stacked vertically, each `w`×`ph`: `png` and its SVG twin.
pub fn save_histograms(panels: &[HistPanel<'_>], w: u32, ph: u32, png: &Path) -> Result<RgbImage> {
    save_figure(&Histograms { panels, w, ph }, png)
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

// --------------------------------------------------------------------------------------- contact sheets
pub const WHITE_RGB: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GREY: Rgb<u8> = Rgb([128, 128, 128]);
pub const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);
const LABEL_INK: Rgb<u8> = Rgb([235, 235, 235]);

/// Pixels between tiles (and around the sheet).
pub const SHEET_GAP: u32 = 4;
/// Height of the label bar above each tile.
pub const SHEET_LABEL: u32 = 18;

/// One labelled picture of a contact sheet.
#[derive(Debug, Clone)]
pub struct Tile {
    pub label: String,
    pub img: RgbImage,
}

/// A grid of labelled tiles, all `tile` sized (others are resized, nearest neighbour), row-major, `cols`
/// per row; `None` leaves a cell empty. Tiles are copied in pixel for pixel: a sheet shows the data exactly.
#[derive(Debug, Clone)]
pub struct Sheet {
    pub cols: usize,
    pub tile: (u32, u32),
    pub cells: Vec<Option<Tile>>,
}

impl Sheet {
    pub fn rows(&self) -> usize {
        self.cells.len().div_ceil(self.cols.max(1))
    }

    /// Width and height of the sheet in pixels.
    pub fn size(&self) -> (u32, u32) {
        let (c, r) = (self.cols.max(1) as u32, self.rows().max(1) as u32);
        (c * self.tile.0 + (c + 1) * SHEET_GAP, r * (self.tile.1 + SHEET_LABEL) + (r + 1) * SHEET_GAP)
    }

    /// Top-left pixel of cell `idx`'s picture (below its label bar).
    pub fn tile_origin(&self, idx: usize) -> (u32, u32) {
        let cols = self.cols.max(1);
        let (col, row) = ((idx % cols) as u32, (idx / cols) as u32);
        (SHEET_GAP + col * (self.tile.0 + SHEET_GAP), SHEET_GAP + row * (self.tile.1 + SHEET_LABEL + SHEET_GAP) + SHEET_LABEL)
    }

    fn pictures(&self) -> impl Iterator<Item = (usize, &Tile)> {
        self.cells.iter().enumerate().filter_map(|(i, t)| Some((i, t.as_ref()?)))
    }

    fn tile_image<'a>(&self, t: &'a Tile) -> std::borrow::Cow<'a, RgbImage> {
        if t.img.dimensions() == self.tile {
            std::borrow::Cow::Borrowed(&t.img)
        } else {
            std::borrow::Cow::Owned(resize_nearest(&t.img, self.tile.0, self.tile.1))
        }
    }
}

impl Figure for Sheet {
    fn size(&self) -> (u32, u32) {
        Sheet::size(self)
    }
    /// Background and labels; the pictures are copied in afterwards (bitmap) or embedded (SVG).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&rgb(BACKGROUND))?;
        for (i, t) in self.pictures() {
            let (x, y) = self.tile_origin(i);
            // The largest of a few sizes that fits the tile's width; past the smallest, the label is cut.
            let mut label = t.label.clone();
            let mut size = 13;
            loop {
                let w = root.estimate_text_size(&label, &font(size, LABEL_INK))?.0;
                if w + 4 <= self.tile.0 {
                    break;
                }
                if size > 9 {
                    size -= 2;
                } else if label.chars().count() > 2 {
                    label = label.chars().take(label.chars().count() - 2).collect::<String>() + "…";
                } else {
                    break;
                }
            }
            let style = font(size, LABEL_INK).pos(Pos::new(HPos::Left, VPos::Center));
            root.draw_text(&label, &style, (x as i32 + 2, y as i32 - SHEET_LABEL as i32 / 2))?;
        }
        Ok(())
    }
}

/// The sheet as a bitmap: labels drawn, pictures copied in exactly.
pub fn render_sheet(sheet: &Sheet) -> Result<RgbImage> {
    let mut img = render(sheet, Path::new("<contact sheet>"))?;
    for (i, t) in sheet.pictures() {
        let (x, y) = sheet.tile_origin(i);
        image::imageops::replace(&mut img, sheet.tile_image(t).as_ref(), x as i64, y as i64);
    }
    Ok(img)
}

/// Writes the sheet as `png` and as an SVG twin whose pictures are embedded PNG `<image>` elements at the
/// same pixel positions; returns the bitmap.
pub fn save_sheet(sheet: &Sheet, png: &Path) -> Result<RgbImage> {
    check_png_path(png)?;
    let img = render_sheet(sheet)?;
    let mut svg = render_svg(sheet, png)?;
    let mut images = String::new();
    for (i, t) in sheet.pictures() {
        let (x, y) = sheet.tile_origin(i);
        let data = base64(&png_bytes(sheet.tile_image(t).as_ref())?);
        images.push_str(&format!(
            "<image x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{data}\"><title>{}</title></image>\n",
            sheet.tile.0,
            sheet.tile.1,
            xml_escape(&t.label)
        ));
    }
    let end = svg.rfind("</svg>").ok_or_else(|| image_err(png, "SVG backend wrote no </svg>"))?;
    svg.insert_str(end, &images);
    write_png(png, &img)?;
    srcache_formats::write_atomic(&svg_path(png), svg.as_bytes())?;
    Ok(img)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 with padding (RFC 4648), for data: URIs.
fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------- inspection kit
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
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
    fn tick_labels_are_short() {
        assert_eq!(fmt_tick(12000.0), "12K");
        assert_eq!(fmt_tick(0.02), "0.02");
        assert_eq!(fmt_tick(31.25), "31.25");
        assert_eq!(fmt_tick(2400.0), "2400");
        assert_eq!(fmt_tick(3.0 * 2e-4), "6e-4");
        assert_eq!(fmt_tick(2.5e-5), "2.5e-5");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn font_renders_text_pixels() {
        let sheet = Sheet { cols: 1, tile: (120, 8), cells: vec![Some(Tile { label: "Mixed case".into(), img: RgbImage::new(120, 8) })] };
        let img = render_sheet(&sheet).unwrap();
        let label_px =
            (0..SHEET_LABEL).flat_map(|y| (0..img.width()).map(move |x| (x, y + SHEET_GAP))).filter(|&(x, y)| img.get_pixel(x, y).0[0] > 128).count();
        assert!(label_px > 30, "label drew {label_px} light pixels");
    }
}
