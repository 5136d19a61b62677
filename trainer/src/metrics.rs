//! Reported image metrics (BasicSR conventions: u8-rounded RGB, BT.601 Y in [16,235], border crop = scale,
//! SSIM with an 11×11 Gaussian σ=1.5 over the valid region), the per-run CSV and the PNG plot of the curves.

use crate::error::{io_err, Result, TorchCtx, TrainerError};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

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

/// [3,H,W] float tensor in [0,1] -> HWC u8 (rounded, clamped), the form every reported metric is computed on.
pub fn tensor_to_rgb8(t: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    let s = t.size();
    if s.len() != 3 || s[0] != 3 {
        return Err(TrainerError::Config { what: "image tensor".into(), why: format!("expected [3,H,W], got {s:?}") });
    }
    let u = t.f_to_kind(Kind::Float)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?.f_round()?.f_to_kind(Kind::Uint8)?
        .f_permute([1, 2, 0])?.f_contiguous()?.f_to_device(tch::Device::Cpu).ctx("to rgb8")?;
    let mut v = vec![0u8; u.numel()];
    u.f_copy_data(&mut v, u.numel()).ctx("copy rgb8")?;
    Ok((v, s[2] as usize, s[1] as usize))
}

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

pub const CSV_HEADER: &str = "step,loss,l1,charbonnier,ssim,fft,edge,wavelet,lr,grad_norm,steps_per_s,samples_per_s,val_psnr,val_ssim";

#[derive(Debug, Clone, Default)]
pub struct Row {
    pub step: u64,
    pub loss: f64,
    pub parts: Vec<(String, f64)>,
    pub lr: f64,
    pub grad_norm: f64,
    pub steps_per_s: f64,
    pub samples_per_s: f64,
    pub val_psnr: Option<f64>,
    pub val_ssim: Option<f64>,
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
        std::fs::write(&path, keep).map_err(io_err(&path))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, r: &Row) -> Result<()> {
        let part = |n: &str| r.parts.iter().find(|(k, _)| k == n).map(|(_, v)| format!("{v:.6}")).unwrap_or_default();
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        let line = format!(
            "{},{:.6},{},{},{},{},{},{},{:.3e},{:.4},{:.3},{:.2},{},{}\n",
            r.step, r.loss, part("l1"), part("charbonnier"), part("ssim"), part("fft"), part("edge"), part("wavelet"),
            r.lr, r.grad_norm, r.steps_per_s, r.samples_per_s, opt(r.val_psnr), opt(r.val_ssim)
        );
        self.file.write_all(line.as_bytes()).map_err(io_err(&self.path))
    }
}

/// Reads metrics.csv and draws loss (log scale, left panel) and validation PSNR (right panel) into a PNG.
pub fn plot(csv: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(csv).map_err(io_err(csv))?;
    let mut loss = Vec::new();
    let mut val = Vec::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let (Some(s), Some(l)) = (c.first().and_then(|v| v.parse::<f64>().ok()), c.get(1).and_then(|v| v.parse::<f64>().ok())) else { continue };
        if l > 0.0 {
            loss.push((s, l.log10()));
        }
        if let Some(v) = c.get(12).and_then(|v| v.parse::<f64>().ok()) {
            val.push((s, v));
        }
    }
    let (pw, ph) = (400u32, 300u32);
    let mut img = image::RgbImage::from_pixel(2 * pw, ph, image::Rgb([255, 255, 255]));
    draw_series(&mut img, 0, pw, ph, &loss, [200, 40, 40]);
    draw_series(&mut img, pw, pw, ph, &val, [40, 80, 200]);
    img.save(png).map_err(|e| TrainerError::Image { path: png.to_path_buf(), why: e.to_string() })
}

fn draw_series(img: &mut image::RgbImage, x_off: u32, pw: u32, ph: u32, pts: &[(f64, f64)], color: [u8; 3]) {
    let m = 20u32;
    for x in m..pw - m {
        img.put_pixel(x_off + x, ph - m, image::Rgb([0, 0, 0]));
    }
    for y in m..ph - m {
        img.put_pixel(x_off + m, y, image::Rgb([0, 0, 0]));
    }
    if pts.is_empty() {
        return;
    }
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let sx = |x: f64| m as f64 + (x - x0) / (x1 - x0).max(1e-12) * (pw - 2 * m) as f64;
    let sy = |y: f64| (ph - m) as f64 - (y - y0) / (y1 - y0).max(1e-12) * (ph - 2 * m) as f64;
    let mut prev: Option<(f64, f64)> = None;
    for &(x, y) in pts {
        let p = (sx(x), sy(y));
        let q = prev.unwrap_or(p);
        let n = ((p.0 - q.0).abs().max((p.1 - q.1).abs()) as usize).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (px, py) = (q.0 + (p.0 - q.0) * t, q.1 + (p.1 - q.1) * t);
            if px >= 0.0 && py >= 0.0 && (px as u32) < pw && (py as u32) < ph {
                img.put_pixel(x_off + px as u32, py as u32, image::Rgb(color));
            }
        }
        prev = Some(p);
    }
}
