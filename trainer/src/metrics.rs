//! Reported image metrics (BasicSR conventions: u8-rounded RGB, BT.601 Y in [16,235], border crop = scale,
//! SSIM with an 11×11 Gaussian σ=1.5 over the valid region), the per-run CSV and the PNG plot of the curves.

use crate::error::{io_err, Result, TorchCtx, TrainerError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

/// An RGB8 image in HWC order (as image::RgbImage's buffer).
pub struct Rgb8<'a> {
    pub data: &'a [u8],
    pub w: usize,
    pub h: usize,
}

/// The cropped Y plane, with the one BT.601 formula srcache uses everywhere (`srcache_ingest::metrics`).
fn y_plane(img: &Rgb8, crop: usize) -> (Vec<f64>, usize, usize) {
    let (w, h) = (img.w.saturating_sub(2 * crop), img.h.saturating_sub(2 * crop));
    let mut out = Vec::with_capacity(w * h);
    for y in crop..crop + h {
        for x in crop..crop + w {
            let p = &img.data[(y * img.w + x) * 3..(y * img.w + x) * 3 + 3];
            out.push(srcache_ingest::metrics::rgb_to_y(p[0] as f64, p[1] as f64, p[2] as f64));
        }
    }
    (out, w, h)
}

/// BasicSR calculate_psnr(crop_border=crop, test_y_channel=True).
pub fn psnr_y(a: &Rgb8, b: &Rgb8, crop: usize) -> f64 {
    let (ya, _, _) = y_plane(a, crop);
    let (yb, _, _) = y_plane(b, crop);
    srcache_ingest::metrics::psnr_plane(&ya, &yb)
}

/// BasicSR calculate_ssim(crop_border=crop, test_y_channel=True).
pub fn ssim_y(a: &Rgb8, b: &Rgb8, crop: usize) -> f64 {
    let (x, w, h) = y_plane(a, crop);
    let (y, _, _) = y_plane(b, crop);
    srcache_ingest::metrics::ssim_plane(&x, &y, w, h)
}

pub use srcache_experts::image::tensor_to_rgb8;

/// Mean PSNR-Y over a batch [B,3,H,W] against `hr`, on u8-rounded images.
pub fn batch_psnr_y(x: &Tensor, hr: &Tensor, crop: usize) -> Result<f64> {
    let n = x.size()[0];
    let mut acc = 0.0;
    for i in 0..n {
        let (a, w, h) = tensor_to_rgb8(&x.f_get(i).ctx("batch item")?)?;
        let (b, _, _) = tensor_to_rgb8(&hr.f_get(i).ctx("batch item")?)?;
        acc += psnr_y(&Rgb8 { data: &a, w, h }, &Rgb8 { data: &b, w, h }, crop).min(100.0);
    }
    Ok(acc / n.max(1) as f64)
}

/// One CSV row per logged step; columns are fixed so runs can be compared.
pub struct MetricsCsv {
    path: PathBuf,
    file: std::fs::File,
}

pub const CSV_HEADER: &str =
    "step,loss,l1,charbonnier,ssim,fft,edge,wavelet,lr,grad_norm,steps_per_s,samples_per_s,val_psnr,val_ssim,val_best_expert_psnr";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub step: u64,
    pub loss: f64,
    /// Weighted loss terms that were active at this step, by [`crate::losses::LOSS_NAMES`] name.
    pub parts: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub steps_per_s: f64,
    pub samples_per_s: f64,
    /// Fused PSNR/SSIM on the checkpoint-selection set (full images when `val_dirs` is set, else held-out).
    pub val_psnr: Option<f64>,
    pub val_ssim: Option<f64>,
    /// The best single expert on that same set: the line fusion has to beat.
    pub val_best_expert_psnr: Option<f64>,
}

impl Row {
    pub fn part(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

impl MetricsCsv {
    /// Opens `<run>/metrics.csv` for appending; on resume rows past `resume_step` are dropped so the file
    /// matches the checkpoint.
    pub fn open(run: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run.join("metrics.csv");
        let mut keep = String::from(CSV_HEADER);
        keep.push('\n');
        if let (Some(s), Ok(old)) = (resume_step, std::fs::read_to_string(&path)) {
            for line in old.lines().skip(1) {
                if line.split(',').next().and_then(|v| v.parse::<u64>().ok()).is_some_and(|st| st <= s) {
                    keep.push_str(line);
                    keep.push('\n');
                }
            }
        }
        srcache_formats::write_atomic(&path, keep.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, r: &Row) -> Result<()> {
        let part = |n: &str| r.part(n).map(|v| format!("{v:.6}")).unwrap_or_default();
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        let line = format!(
            "{},{:.6},{},{},{},{},{},{},{:.3e},{:.4},{:.3},{:.2},{},{},{}\n",
            r.step,
            r.loss,
            part("l1"),
            part("charbonnier"),
            part("ssim"),
            part("fft"),
            part("edge"),
            part("wavelet"),
            r.lr,
            r.grad_norm,
            r.steps_per_s,
            r.samples_per_s,
            opt(r.val_psnr),
            opt(r.val_ssim),
            opt(r.val_best_expert_psnr)
        );
        self.file.write_all(line.as_bytes()).map_err(io_err(&self.path))
    }
}

/// Every training step as one row of `<run>/metrics.parquet` (the CSV keeps only logged steps). Throughput
/// columns are per step (that step's wall time, data wait included); loss-term and validation columns are
/// null where the term was inactive or no validation ran. Rewritten atomically at each checkpoint, so the
/// file always matches the newest checkpoint, and a resume drops the rows past it.
pub struct MetricsParquet {
    path: PathBuf,
    pub rows: Vec<Row>,
}

/// The f64 columns besides the loss terms, in the order [`read_parquet`] indexes them.
const PQ_VALUES: [&str; 8] = ["loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "val_psnr", "val_ssim", "val_best_expert_psnr"];

impl MetricsParquet {
    pub fn open(run: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run.join("metrics.parquet");
        let mut rows = match resume_step {
            Some(_) if path.exists() => read_parquet(&path)?,
            _ => Vec::new(),
        };
        rows.retain(|r| resume_step.is_some_and(|s| r.step <= s));
        Ok(Self { path, rows })
    }

    pub fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    pub fn flush(&self) -> Result<()> {
        write_parquet(&self.path, &self.rows)
    }
}

fn pq_err(path: &Path) -> impl Fn(String) -> TrainerError + '_ {
    move |why| TrainerError::Metrics { path: path.to_path_buf(), why }
}

/// Writes `rows` to `path` atomically.
pub fn write_parquet(path: &Path, rows: &[Row]) -> Result<()> {
    use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};
    let err = pq_err(path);
    let mut fields = vec![Field::new("step", DataType::UInt64, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.step)))];
    let mut f64col = |name: &str, nullable: bool, get: &dyn Fn(&Row) -> Option<f64>| {
        fields.push(Field::new(name, DataType::Float64, nullable));
        cols.push(Arc::new(Float64Array::from_iter(rows.iter().map(get))));
    };
    f64col("loss", false, &|r| Some(r.loss));
    for name in crate::losses::LOSS_NAMES {
        f64col(name, true, &|r| r.part(name));
    }
    f64col("lr", false, &|r| Some(r.lr));
    f64col("grad_norm", false, &|r| Some(r.grad_norm));
    f64col("steps_per_s", false, &|r| Some(r.steps_per_s));
    f64col("samples_per_s", false, &|r| Some(r.samples_per_s));
    f64col("val_psnr", true, &|r| r.val_psnr);
    f64col("val_ssim", true, &|r| r.val_ssim);
    f64col("val_best_expert_psnr", true, &|r| r.val_best_expert_psnr);
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| err(format!("building columns: {e}")))?;
    Ok(srcache_formats::write_parquet(path, &batch, &Default::default())?)
}

/// Reads a metrics.parquet back into rows (loss terms that are null are left out of `parts`).
pub fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use arrow_array::{Array, Float64Array, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let err = pq_err(path);
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    // parquet panics on some corrupt footers; a damaged metrics file must be an error, not a crash.
    let reader = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build())))
        .map_err(|_| err("corrupt Parquet footer".into()))?
        .map_err(|e| err(format!("not a readable Parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(format!("reading rows: {e}")))?;
        let f = |name: &str| -> Result<&Float64Array> {
            batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Float64Array>()).ok_or_else(|| err(format!("no f64 column {name:?}")))
        };
        let step = batch
            .column_by_name("step")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| err("no u64 column \"step\"".into()))?;
        let values: Vec<&Float64Array> = PQ_VALUES.iter().map(|n| f(n)).collect::<Result<_>>()?;
        let parts: Vec<(&str, &Float64Array)> = crate::losses::LOSS_NAMES.iter().map(|n| Ok((*n, f(n)?))).collect::<Result<_>>()?;
        let get = |c: &Float64Array, i: usize| c.is_valid(i).then(|| c.value(i));
        for i in 0..batch.num_rows() {
            rows.push(Row {
                step: step.value(i),
                loss: values[0].value(i),
                parts: parts.iter().filter_map(|(n, c)| get(c, i).map(|v| (n.to_string(), v))).collect(),
                lr: values[1].value(i),
                grad_norm: values[2].value(i),
                steps_per_s: values[3].value(i),
                samples_per_s: values[4].value(i),
                val_psnr: get(values[5], i),
                val_ssim: get(values[6], i),
                val_best_expert_psnr: get(values[7], i),
            });
        }
    }
    Ok(rows)
}

/// Exponential moving average with bias correction, over about `span` points, run forwards then backwards:
/// zero phase, so the smoothed loss sits on the raw one instead of lagging behind a falling curve.
fn smooth(points: &[(f64, f64)], span: f64) -> Vec<(f64, f64)> {
    let a = 1.0 - 1.0 / span.max(1.0);
    let ema = |ys: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
        let (mut m, mut w) = (0.0, 0.0);
        ys.map(|y| {
            m = a * m + (1.0 - a) * y;
            w = a * w + (1.0 - a);
            m / w
        })
        .collect()
    };
    let fwd = ema(&mut points.iter().map(|p| p.1));
    let mut both = ema(&mut fwd.into_iter().rev());
    both.reverse();
    points.iter().zip(both).map(|(p, y)| (p.0, y)).collect()
}

/// Lightens a colour towards white (`t` = 0 unchanged, 1 white): the faint raw-loss trace.
fn faint(c: image::Rgb<u8>, t: f64) -> image::Rgb<u8> {
    image::Rgb(c.0.map(|v| (v as f64 + (255.0 - v as f64) * t).round() as u8))
}

/// Draws curves.png (and curves.svg beside it) from the per-step rows: loss (raw per step, faint, and
/// smoothed; log y when it spans more than a decade), learning rate, and validation PSNR (fused, with the best
/// single expert dashed).
pub fn plot(rows: &[Row], png: &Path) -> Result<()> {
    use crate::plot::{save_panels, Panel, Series, Style, SERIES_COLORS};
    let loss: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.loss)).filter(|p| p.1.is_finite() && p.1 > 0.0).collect();
    let (lo, hi) = loss.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let log_y = !loss.is_empty() && hi / lo > 10.0;
    // About 4% of the run, but at least 2 steps once there are enough to smooth: short runs get a visible trend.
    let span = if loss.len() < 10 { 1.0 } else { (loss.len() as f64 / 25.0).clamp(2.0, 200.0) };
    let smoothed = smooth(&loss, span);
    let blue = SERIES_COLORS[0];
    let loss_panel = Panel {
        title: "Training loss".into(),
        x_label: "Step".into(),
        y_label: if log_y { "Loss (log scale)".into() } else { "Loss".into() },
        log_y,
        series: vec![
            Series { label: "per step".into(), color: faint(blue, 0.6), style: Style::Thin, points: loss },
            Series { label: "smoothed".into(), color: blue, style: Style::Line, points: smoothed },
        ],
        empty: "no steps yet".into(),
    };
    let lr_panel = Panel {
        title: "Learning rate".into(),
        x_label: "Step".into(),
        y_label: "Learning rate".into(),
        log_y: false,
        series: vec![Series {
            label: String::new(),
            color: SERIES_COLORS[1],
            style: Style::Line,
            points: rows.iter().map(|r| (r.step as f64, r.lr)).collect(),
        }],
        empty: "no steps yet".into(),
    };
    let val: Vec<(f64, f64)> = rows.iter().filter_map(|r| Some((r.step as f64, r.val_psnr?))).collect();
    let mut series = vec![Series { label: "fused".into(), color: SERIES_COLORS[2], style: Style::Markers, points: val }];
    if let Some((s, e)) = rows.iter().rev().find_map(|r| Some((r.step as f64, r.val_best_expert_psnr?))) {
        series.push(Series { label: "best expert".into(), color: SERIES_COLORS[3], style: Style::Reference, points: vec![(s, e)] });
    }
    let val_panel = Panel {
        title: "Validation PSNR (Y)".into(),
        x_label: "Step".into(),
        y_label: "PSNR (dB)".into(),
        log_y: false,
        series,
        empty: "no validation yet".into(),
    };
    let x0 = rows.first().map(|r| r.step.saturating_sub(1) as f64).unwrap_or(0.0);
    let x1 = rows.last().map(|r| r.step as f64).unwrap_or(1.0);
    save_panels(&[loss_panel, lr_panel, val_panel], (x0, x1), 420, 300, png).map(|_| ())
}
