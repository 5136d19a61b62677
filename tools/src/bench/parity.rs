//! `srcache bench parity`: the same real LR patches through each expert on a device and on the CPU, fp32 and
//! fp16 autocast: the numerical check behind running experts on a GPU (bars: fp32 max |diff| <= 1e-3, fp16
//! PSNR against the CPU's fp32 >= 45 dB). Prints the figures against the bars; the exit status is 0 unless
//! something fails to run (scripts/gpu-check.sh reads the JSON).
//!
//! `--time N` also times each expert's CPU forward (median of N, after a warm-up), so the same model given as
//! TorchScript and as an AOTInductor package (`--expert ts=m.pt --expert pt2=m.pt2`) is compared in one run;
//! eager PyTorch is timed beside both by `python -m srcache.bench_export`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use srcache_experts::{parse_device, Expert, ExpertSpec};
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct BenchParityArgs {
    /// Expert as NAME=builtin:KIND or NAME=FILE.pt; repeatable.
    #[arg(long = "expert", required = true)]
    pub experts: Vec<String>,
    /// The device compared against the CPU (`cuda:0`; `cpu` compares the CPU with itself).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
    /// LR patch side (a traced transformer expert needs its traced size).
    #[arg(long, default_value_t = 64)]
    pub patch: u32,
    /// Patches compared (cut from the built-in photos, MATLAB-bicubic LR).
    #[arg(long, default_value_t = 8)]
    pub patches: usize,
    /// Also time each expert's CPU forward on the patches: median of this many runs (0: no timing).
    #[arg(long = "time", default_value_t = 0)]
    pub time_reps: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct ExpertParity {
    expert: String,
    fp32_max_abs_diff_sr: f64,
    fp32_max_abs_diff_feat: Option<f64>,
    fp16_psnr_sr_db: Option<f64>,
    fp32_ok: bool,
    fp16_ok: Option<bool>,
    cpu_forward_ms: Option<f64>,
}

/// Median wall time (ms) of `reps` CPU forwards after one warm-up.
fn time_forward(e: &Expert, x: &Tensor, reps: usize) -> Result<f64> {
    let _warm = e.forward(x)?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let _out = e.forward(x)?;
        ts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// `n` LR patches of `p`×`p` from the built-in photos, as f32 [n,3,p,p] in [0,1].
fn patches(n: usize, p: u32, scale: u32) -> Result<Tensor> {
    let mut data = Vec::with_capacity(n * 3 * (p * p) as usize);
    let photos = srcache_ingest::photos::PHOTOS;
    for k in 0..n {
        let hr = srcache_ingest::photos::decode(photos[k % photos.len()].0)?;
        let (_, lr) = srcache_ingest::resize::bicubic_lr(&hr, scale);
        let (w, h) = lr.dimensions();
        anyhow::ensure!(w >= p && h >= p, "patch {p} is larger than the built-in photos at x{scale}");
        let (x0, y0) = (((k as u32 * 37) % (w - p + 1)), ((k as u32 * 53) % (h - p + 1)));
        for c in 0..3 {
            for y in y0..y0 + p {
                for x in x0..x0 + p {
                    data.push(lr.get_pixel(x, y).0[c] as f32 / 255.0);
                }
            }
        }
    }
    Ok(Tensor::f_from_slice(&data)?.f_reshape([n as i64, 3, p as i64, p as i64])?)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)? - b.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?)
        .f_abs()?
        .f_max()?
        .f_double_value(&[])?)
}

/// PSNR (dB, peak 1) of `a` against `b`, both clamped to [0,1].
fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = a.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_clamp(0.0, 1.0)?
        - b.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_clamp(0.0, 1.0)?;
    let mse = d.f_square()?.f_mean(Kind::Double)?.f_double_value(&[])?;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (1.0 / mse).log10() })
}

pub fn run(a: BenchParityArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let x = patches(a.patches, a.patch, a.scale)?;
    let _g = tch::no_grad_guard();
    let mut rows = Vec::new();
    println!("{} LR patches {}x{} at x{}, {} vs cpu", a.patches, a.patch, a.patch, a.scale, a.device);
    println!("{:<14} {:>16} {:>16} {:>16}", "expert", "fp32 max|d| sr", "fp32 max|d| feat", "fp16 PSNR sr");
    for spec in &a.experts {
        let spec: ExpertSpec = spec.parse()?;
        let p = a.patch as usize;
        let cpu = Expert::load(&spec.name, &spec.source, a.scale, Device::Cpu, p)?;
        let dev = Expert::load(&spec.name, &spec.source, a.scale, device, p)?;
        let (sr_c, feat_c) = cpu.forward(&x)?;
        let xd = x.f_to_device(device)?;
        let (sr_d, feat_d) = dev.forward(&xd)?;
        let d_sr = max_abs(&sr_c, &sr_d)?;
        let d_feat = match (&feat_c, &feat_d) {
            (Some(a), Some(b)) => Some(max_abs(a, b)?),
            _ => None,
        };
        // fp16 autocast exists on CUDA only.
        let fp16 = if device.is_cuda() {
            let (sr_h, _) = tch::autocast(true, || dev.forward(&xd)).with_context(|| format!("{}: fp16 forward", spec.name))?;
            Some(psnr(&sr_h, &sr_c)?)
        } else {
            None
        };
        let fp32_ok = d_sr <= 1e-3 && d_feat.is_none_or(|d| d <= 1e-3);
        let fp16_ok = fp16.map(|p| p >= 45.0);
        let cpu_ms = if a.time_reps > 0 { Some(time_forward(&cpu, &x, a.time_reps)?) } else { None };
        if let Some(ms) = cpu_ms {
            println!("{:<14} cpu forward {ms:.1} ms (median of {}, {} patches)", spec.name, a.time_reps, a.patches);
        }
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:>16} {:>16} {:>16}   fp32 {} (bar <= 1e-3), fp16 {}",
            spec.name,
            format!("{d_sr:.3e}"),
            fmt(d_feat),
            fp16.map(|p| format!("{p:.2} dB")).unwrap_or_else(|| "-".into()),
            if fp32_ok { "ok" } else { "FAIL" },
            match fp16_ok {
                Some(true) => "ok (bar >= 45 dB)",
                Some(false) => "FAIL (bar >= 45 dB)",
                None => "not run (CUDA only)",
            }
        );
        rows.push(ExpertParity {
            expert: spec.name,
            fp32_max_abs_diff_sr: d_sr,
            fp32_max_abs_diff_feat: d_feat,
            fp16_psnr_sr_db: fp16,
            fp32_ok,
            fp16_ok,
            cpu_forward_ms: cpu_ms,
        });
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({"device": a.device, "patch": a.patch, "scale": a.scale, "patches": a.patches, "experts": rows});
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&j)?)?;
    }
    Ok(())
}
