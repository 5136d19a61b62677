//! What a run leaves for people to look at: curves and histograms as PNG + SVG holding the plotted data,
//! contact sheets whose tiles are the data pixel for pixel, TensorBoard events that TensorBoard's own reader
//! reads back equal to metrics.csv, and a final validation in every run, however short.

#![allow(clippy::field_reassign_with_default, reason = "a test config reads best as one setting per line")]

mod common;
#[path = "common/svg.rs"]
mod svg;

use image::{Rgb, RgbImage};
use srcache_trainer::config::TrainConfig;
use srcache_trainer::metrics::Row;
use srcache_trainer::plot::{self, HistPanel, Sheet, Tile};
use srcache_trainer::train::{train, TRAIN_SCORE_SOURCE};
use std::path::{Path, PathBuf};

fn tiny_cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.device = "cpu".into();
    c.threads = Some(2);
    c.model.scale = 2;
    c.model.width = 8;
    c.model.blocks = 1;
    c.model.feat_proj = 2;
    c.loader.batch_size = 4;
    c.loader.crop = Some(8);
    c.loader.workers = 1;
    c.optim.warmup_steps = 2;
    c.export = false;
    c
}

/// `SRCACHE_KEEP_PLOTS=DIR` keeps a test's PNG and SVG for a look.
fn keep(png: &Path) {
    if let Ok(dir) = std::env::var("SRCACHE_KEEP_PLOTS") {
        for f in [png.to_path_buf(), plot::svg_path(png)] {
            let _ = std::fs::copy(&f, Path::new(&dir).join(f.file_name().unwrap_or_default()));
        }
    }
}

fn hex(c: Rgb<u8>) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0[0], c.0[1], c.0[2])
}

fn read_svg(png: &Path) -> Vec<svg::Element> {
    let p = plot::svg_path(png);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let els = svg::parse(&text).unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", p.display()));
    assert_eq!(els[0].name, "svg");
    els
}

/// The polyline of `color` with the most points (legend swatches are 2-point polylines of the same colour).
fn series_line(els: &[svg::Element], color: Rgb<u8>) -> &svg::Element {
    els.iter().filter(|e| e.name == "polyline" && e.attr("stroke") == hex(color)).max_by_key(|e| e.points().len()).expect("series polyline")
}

#[test]
fn curves_png_and_svg_hold_the_plotted_series() {
    let tmp = tempfile::tempdir().expect("tmp");
    let png = tmp.path().join("curves.png");
    let n = 40u64;
    let rows: Vec<Row> = (1..=n)
        .map(|s| Row {
            step: s,
            loss: 0.2 / (1.0 + s as f64 * 0.1) + 0.01 * ((s as f64) * 1.7).sin().abs(),
            lr: 1e-3 * (1.0 - s as f64 / n as f64) + 1e-5,
            val_psnr: (s % 10 == 0).then_some(28.0 + s as f64 * 0.05),
            val_best_expert_psnr: (s % 10 == 0).then_some(29.0),
            ..Default::default()
        })
        .collect();
    srcache_trainer::metrics::plot(&rows, &png).expect("plot");
    keep(&png);
    let img = image::open(&png).expect("curves.png decodes").to_rgb8();
    let els = read_svg(&png);
    assert_eq!((img.width() as f64, img.height() as f64), (els[0].num("width"), els[0].num("height")), "PNG and SVG are one figure");
    // Learning rate: one point per step, x in step order, y an exact affine (downward) image of the data.
    let lr = series_line(&els, plot::SERIES_COLORS[1]).points();
    assert_eq!(lr.len(), n as usize);
    assert!(lr.windows(2).all(|w| w[1].0 >= w[0].0), "x follows the steps");
    let (slope, worst) = svg::affine_fit(&rows.iter().map(|r| r.lr).zip(lr.iter().map(|p| p.1)).collect::<Vec<_>>());
    assert!(slope < 0.0 && worst <= 1.0, "lr pixels are not an affine image of the data: slope {slope}, worst residual {worst} px");
    let span = lr.iter().map(|p| p.1).fold(f64::MIN, f64::max) - lr.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    assert!(span > 150.0, "the lr curve fills the panel ({span} px)");
    // Validation: 4 points with markers, in the same affine relation.
    let val = series_line(&els, plot::SERIES_COLORS[2]).points();
    assert_eq!(val.len(), 4);
    let vals: Vec<f64> = rows.iter().filter_map(|r| r.val_psnr).collect();
    let (slope, worst) = svg::affine_fit(&vals.iter().copied().zip(val.iter().map(|p| p.1)).collect::<Vec<_>>());
    assert!(slope < 0.0 && worst <= 1.0, "val {slope} {worst}");
    assert!(els.iter().filter(|e| e.name == "circle" && e.attr("fill") == hex(plot::SERIES_COLORS[2])).count() >= 4, "markers");
    // Loss: the raw per-step trace has every step; axes are labelled in words with units, mixed case.
    let texts: Vec<&str> = els.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
    for want in ["Training loss", "Learning rate", "Validation PSNR (Y)", "PSNR (dB)", "Step", "best expert", "fused"] {
        assert!(texts.contains(&want), "no text {want:?} in {texts:?}");
    }
    assert!(els.iter().any(|e| e.name == "polyline" && e.points().len() == n as usize && e.attr("stroke-width") == "1"), "raw loss trace");
    // The bitmap has the series' colour where the SVG drew it.
    let (x, y) = lr[n as usize / 2];
    let near = (-2i64..=2).flat_map(|dx| (-2i64..=2).map(move |dy| (dx, dy))).any(|(dx, dy)| {
        let (px, py) = ((x as i64 + dx) as u32, (y as i64 + dy) as u32);
        px < img.width() && py < img.height() && *img.get_pixel(px, py) == plot::SERIES_COLORS[1]
    });
    assert!(near, "the PNG has the lr colour at the SVG's point ({x}, {y})");
}

#[test]
fn histograms_draw_one_bar_per_bin_with_axes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let png = tmp.path().join("hist.png");
    let values: Vec<f32> = (0..200).map(|i| 25.0 + (i as f32 * 0.37).sin() * 4.0 + (i % 7) as f32 * 0.3).collect();
    let counts = plot::histogram(&values, 20, 20.0, 32.0);
    let color = plot::PALETTE[1];
    let panels = [HistPanel {
        title: "a: 200 samples",
        counts: &counts,
        lo: 20.0,
        hi: 32.0,
        color,
        x_label: "PSNR (dB)",
        y_label: "Samples",
        marker: Some((25.0, "mean 25.00 dB".into())),
    }];
    let img = plot::save_histograms(&panels, 640, 240, &png).expect("histogram");
    keep(&png);
    assert_eq!(image::open(&png).expect("decodes").to_rgb8(), img);
    let els = read_svg(&png);
    let bars: Vec<&svg::Element> = els.iter().filter(|e| e.name == "rect" && e.attr("fill") == hex(color)).collect();
    let nonzero: Vec<u64> = counts.iter().copied().filter(|&c| c > 0).collect();
    assert_eq!(bars.len(), nonzero.len(), "one bar per non-empty bin");
    let (slope, worst) = svg::affine_fit(&nonzero.iter().zip(&bars).map(|(&c, b)| (c as f64, b.num("height"))).collect::<Vec<_>>());
    assert!(slope > 0.0 && worst <= 1.5, "bar heights follow the counts: {slope} {worst}");
    let texts: Vec<&str> = els.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
    for want in ["PSNR (dB)", "Samples", "mean 25.00 dB", "a: 200 samples"] {
        assert!(texts.contains(&want), "no {want:?} in {texts:?}");
    }
}

#[test]
fn sheet_tiles_are_the_data_in_png_and_svg() {
    let tmp = tempfile::tempdir().expect("tmp");
    let png = tmp.path().join("sheet.png");
    let tile = |k: u8| RgbImage::from_fn(24, 16, |x, y| Rgb([x as u8 * 10 + k, y as u8 * 15, k.wrapping_mul(40)]));
    let cells = vec![
        Some(Tile { label: "First & <one>".into(), img: tile(1) }),
        None,
        Some(Tile { label: "A label far too long for the tile".into(), img: tile(2) }),
    ];
    let sheet = Sheet { cols: 2, tile: (24, 16), cells };
    let img = plot::save_sheet(&sheet, &png).expect("sheet");
    keep(&png);
    assert_eq!(image::open(&png).expect("decodes").to_rgb8(), img);
    assert_eq!(img.dimensions(), sheet.size());
    let err = plot::save_sheet(&sheet, &tmp.path().join("sheet2.svg")).expect_err("an .svg PNG path");
    assert!(err.to_string().contains("give the PNG path"), "{err}");
    let els = read_svg(&png);
    let images: Vec<&svg::Element> = els.iter().filter(|e| e.name == "image").collect();
    assert_eq!(images.len(), 2);
    for (idx, k, el) in [(0usize, 1u8, images[0]), (2, 2, images[1])] {
        let (x, y) = sheet.tile_origin(idx);
        let drawn = image::imageops::crop_imm(&img, x, y, 24, 16).to_image();
        assert_eq!(drawn, tile(k), "bitmap tile {idx}");
        assert_eq!((el.num("x"), el.num("y")), (x as f64, y as f64));
        let data = el.attr("href").strip_prefix("data:image/png;base64,").expect("embedded PNG");
        let embedded = image::load_from_memory(&svg::decode_base64(data)).expect("embedded PNG decodes").to_rgb8();
        assert_eq!(embedded, tile(k), "SVG tile {idx}");
    }
}

fn venv_python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    p.exists().then_some(p)
}

#[test]
fn tensorboard_events_read_back_equal_to_metrics_csv_and_the_val_sheet() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    common::make_dataset(&data, 48, 8, 2);
    let mut cfg = tiny_cfg();
    cfg.steps = 9;
    cfg.log_every = 2;
    cfg.val_every = 4;
    cfg.val_fraction = 0.3;
    cfg.loss.weights.l1 = 0.5;
    let s = train(&cfg, &data, &run, false, &mut |_| {}).expect("train");
    assert_eq!(s.steps, 9);
    let tb: Vec<_> = std::fs::read_dir(run.join("tb")).expect("tb dir").flatten().collect();
    assert_eq!(tb.len(), 1, "one event file per start");
    assert!(run.join("val_sheet.png").exists() && run.join("val_sheet.svg").exists() && run.join("curves.svg").exists());
    let sheet = image::open(run.join("val_sheet.png")).expect("val sheet").to_rgb8();
    // One row per shown sample: bicubic, 3 experts, fused, HR.
    assert_eq!(sheet.width(), 6 * 96 + 7 * plot::SHEET_GAP);
    let Some(py) = venv_python() else {
        println!("skipped: no .venv python to read the events with TensorBoard (scripts/setup.sh makes it)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/tests/check_tensorboard.py");
    let check = || {
        let out = std::process::Command::new(&py).arg(&script).arg(&run).output().expect("python");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = check();
    if text.contains("No module named 'tensorboard'") {
        println!("skipped: the .venv has no tensorboard (pip install -r requirements.txt)");
        return;
    }
    assert!(ok, "{text}");
    println!("{}", text.trim());
    // A resumed run adds a second event file (starting with a SessionLog START at step 9); read together,
    // the two still give each step once, equal to the resumed metrics.csv.
    cfg.steps = 12;
    train(&cfg, &data, &run, true, &mut |_| {}).expect("resume");
    assert_eq!(std::fs::read_dir(run.join("tb")).expect("tb").count(), 2);
    let (ok, text) = check();
    assert!(ok && text.contains("2 event file(s)"), "{text}");
    println!("{}", text.trim());
}

#[test]
fn tensorboard_is_a_switch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    common::make_dataset(&data, 8, 8, 2);
    let mut cfg = tiny_cfg();
    cfg.steps = 2;
    cfg.tensorboard = false;
    train(&cfg, &data, &run, false, &mut |_| {}).expect("train");
    assert!(!run.join("tb").exists());
    assert!(run.join("metrics.csv").exists() && run.join("metrics.parquet").exists());
}

/// A short run with the default `val_every` (200) still scores its final model: in metrics.csv, the
/// curves, val.json. With a single source image no sample is held out, and the score comes from training
/// samples, labelled so.
#[test]
fn a_short_run_validates_its_final_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (n, held_out) in [(4usize, false), (48, true)] {
        let (data, run) = (tmp.path().join(format!("data{n}")), tmp.path().join(format!("run{n}")));
        common::make_dataset(&data, n, 8, 2);
        let mut cfg = tiny_cfg();
        cfg.steps = 6;
        cfg.val_fraction = 0.3;
        assert_eq!(cfg.val_every, TrainConfig::default().val_every);
        let mut progress_rates = Vec::new();
        let s = train(&cfg, &data, &run, false, &mut |r| progress_rates.push((r.steps_per_s, r.samples_per_s))).expect("train");
        let table = s.val.as_ref().expect("the final model was validated");
        assert_eq!(table.source == TRAIN_SCORE_SOURCE, !held_out, "{}", table.source);
        let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("csv");
        let last: Vec<&str> = csv.lines().last().expect("row").split(',').collect();
        assert_eq!(last[0], "6");
        assert!(last[12].parse::<f64>().is_ok_and(|p| p > 10.0), "val_psnr of the last row: {last:?}");
        let val: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("val.json")).expect("val.json")).expect("json");
        assert_eq!(val["step"], 6);
        let log = std::fs::read_to_string(run.join("val.log")).expect("val.log");
        assert!(log.contains("validation at step 6"), "{log}");
        // The progress callback sees one consistent rate on every step (never a 0 between log points).
        assert!(progress_rates.iter().all(|&(st, sa)| st > 0.0 && (sa / st - 4.0).abs() < 1e-6), "{progress_rates:?}");
    }
}
