//! `srcache bench parity`: the same real LR patches through each expert on a device and on the CPU, fp32 and
//! fp16 autocast: the numerical check behind running experts on a GPU (bars: fp32 max |diff| <= 1e-3, fp16
//! PSNR against the CPU's fp32 >= 45 dB). Prints the figures against the bars; the exit status is 0 unless
//! something fails to run (scripts/gpu-check.sh reads the JSON).
//!
//! AOTInductor packages (`.pt2`) run at the dtype they were compiled at (autocast does not reach compiled
//! kernels), so a package's metadata `dtype` decides what is measured: an f32 package against the fp32 bar, an
//! fp16 package against the fp16 bar (PSNR against the CPU's f32 >= 45 dB), a bf16 package by its PSNR alone
//! (no bar yet: no measured figure to set one from). A package compiled for CUDA cannot run on the CPU:
//! `--cpu-reference NAME=FILE` names the CPU model it is compared with (its TorchScript twin, same weights).
//!
//! `--time N` also times each expert's forward on `--device` (median of N after a warm-up, synchronised on
//! CUDA), and a TorchScript expert's fp16 autocast forward on CUDA, so the same model given as TorchScript and
//! as packages (`--expert ts=m.pt --expert pt2=m.pt2 --expert pt2_fp16=m.fp16.pt2`) is compared in one run;
//! eager PyTorch is timed beside them by `python -m srcache.bench_export` (CPU) and
//! python/tools/make_gpu_experts.py --pt2 (its ARCH.DTYPE.pt2.json).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use srcache_experts::{parse_device, Expert, ExpertSource, ExpertSpec, ModelFormat};
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
    /// The model run on the CPU as NAME's reference, as NAME=FILE (default: NAME's own file); needed for a
    /// .pt2 compiled for CUDA. Repeatable.
    #[arg(long = "cpu-reference")]
    pub references: Vec<String>,
    /// Also time each expert's forward on --device: median of this many runs (0: no timing).
    #[arg(long = "time", default_value_t = 0)]
    pub time_reps: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct ExpertParity {
    expert: String,
    /// "torchscript", "pt2" or "builtin".
    format: &'static str,
    /// The dtype the expert computes in: a package's metadata dtype, else "fp32".
    precision: String,
    reference: String,
    fp32_max_abs_diff_sr: f64,
    fp32_max_abs_diff_feat: Option<f64>,
    /// fp16 autocast (TorchScript on CUDA) or an fp16 package: sr PSNR against the CPU's f32.
    fp16_psnr_sr_db: Option<f64>,
    /// A bf16 package: sr PSNR against the CPU's f32 (no bar).
    bf16_psnr_sr_db: Option<f64>,
    /// None where the fp32 bar does not apply (a half-precision package).
    fp32_ok: Option<bool>,
    fp16_ok: Option<bool>,
    /// Median ms of one forward of all the patches on --device.
    forward_ms: Option<f64>,
    /// The same under fp16 autocast (TorchScript on CUDA).
    fp16_autocast_forward_ms: Option<f64>,
}

/// Median wall time (ms) of `reps` forwards after one warm-up, synchronised with the device.
fn time_forward(e: &Expert, x: &Tensor, reps: usize, autocast: bool) -> Result<f64> {
    let sync = || {
        if let Device::Cuda(i) = x.device() {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let once = || -> Result<()> {
        // The outputs are dropped: only the time counts.
        let _out = if autocast { tch::autocast(true, || e.forward(x))? } else { e.forward(x)? };
        Ok(())
    };
    once()?;
    sync();
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        once()?;
        sync();
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
    let mut refs: HashMap<String, ExpertSpec> = HashMap::new();
    for r in &a.references {
        let spec: ExpertSpec = r.parse().with_context(|| format!("--cpu-reference {r}: expected NAME=FILE"))?;
        refs.insert(spec.name.clone(), spec);
    }
    if let Some(n) = refs.keys().find(|n| !a.experts.iter().any(|e| e.split('=').next() == Some(n.as_str()))) {
        anyhow::bail!("--cpu-reference {n}: no --expert of that name");
    }
    // CPU outputs per reference source: a TorchScript twin shared by several packages runs once.
    let mut cpu_out: HashMap<String, (Tensor, Option<Tensor>)> = HashMap::new();
    let mut rows = Vec::new();
    println!("{} LR patches {}x{} at x{}, {} vs cpu", a.patches, a.patch, a.patch, a.scale, a.device);
    println!("{:<16} {:>6} {:>16} {:>16} {:>18}", "expert", "dtype", "fp32 max|d| sr", "fp32 max|d| feat", "half PSNR sr");
    for spec in &a.experts {
        let spec: ExpertSpec = spec.parse()?;
        let p = a.patch as usize;
        let reference = refs.get(&spec.name).unwrap_or(&spec);
        let key = reference.source.to_string();
        if !cpu_out.contains_key(&key) {
            let cpu = Expert::load(&spec.name, &reference.source, a.scale, Device::Cpu, p)
                .with_context(|| format!("{}: the CPU reference {key}", spec.name))?;
            cpu_out.insert(key.clone(), cpu.forward(&x)?);
        }
        let (sr_c, feat_c) = &cpu_out[&key];
        let dev = Expert::load(&spec.name, &spec.source, a.scale, device, p)?;
        let format = match &spec.source {
            ExpertSource::Builtin(_) => "builtin",
            ExpertSource::TorchScript(path) if ModelFormat::of(path) == ModelFormat::Pt2 => "pt2",
            ExpertSource::TorchScript(_) => "torchscript",
        };
        let precision = dev.meta().map(|m| m.compute_dtype().to_string()).unwrap_or_else(|| "fp32".into());
        let xd = x.f_to_device(device)?;
        let (sr_d, feat_d) = dev.forward(&xd)?;
        let d_sr = max_abs(sr_c, &sr_d)?;
        let d_feat = match (feat_c, &feat_d) {
            (Some(a), Some(b)) => Some(max_abs(a, b)?),
            _ => None,
        };
        let (mut fp16, mut bf16) = (None, None);
        match precision.as_str() {
            "fp16" => fp16 = Some(psnr(&sr_d, sr_c)?),
            "bf16" => bf16 = Some(psnr(&sr_d, sr_c)?),
            // fp16 autocast exists on CUDA only, and does not reach a package's compiled kernels.
            _ if device.is_cuda() && format != "pt2" => {
                let (sr_h, _) = tch::autocast(true, || dev.forward(&xd)).with_context(|| format!("{}: fp16 forward", spec.name))?;
                fp16 = Some(psnr(&sr_h, sr_c)?);
            }
            _ => {}
        }
        let fp32_ok = (precision == "fp32").then(|| d_sr <= 1e-3 && d_feat.is_none_or(|d| d <= 1e-3));
        let fp16_ok = fp16.map(|p| p >= 45.0);
        let (mut ms, mut ms16) = (None, None);
        if a.time_reps > 0 {
            ms = Some(time_forward(&dev, &xd, a.time_reps, false)?);
            if device.is_cuda() && format != "pt2" {
                ms16 = Some(time_forward(&dev, &xd, a.time_reps, true)?);
            }
            println!(
                "{:<16} forward on {} {:.2} ms{} (median of {}, {} patches)",
                spec.name,
                a.device,
                ms.unwrap_or(0.0),
                ms16.map(|v| format!(", fp16 autocast {v:.2} ms")).unwrap_or_default(),
                a.time_reps,
                a.patches
            );
        }
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "-".into());
        let half = match (fp16, bf16) {
            (Some(p), _) => format!("{p:.2} dB"),
            (_, Some(p)) => format!("{p:.2} dB (bf16)"),
            _ => "-".into(),
        };
        println!(
            "{:<16} {:>6} {:>16} {:>16} {:>18}   fp32 {}, fp16 {}",
            spec.name,
            precision,
            format!("{d_sr:.3e}"),
            fmt(d_feat),
            half,
            match fp32_ok {
                Some(true) => "ok (bar <= 1e-3)",
                Some(false) => "FAIL (bar <= 1e-3)",
                None => "n/a (a half-precision package)",
            },
            match (fp16_ok, bf16) {
                (Some(true), _) => "ok (bar >= 45 dB)",
                (Some(false), _) => "FAIL (bar >= 45 dB)",
                (None, Some(_)) => "n/a (bf16: no bar)",
                (None, None) if format == "pt2" => "n/a (a .pt2 runs at its compiled dtype: export an fp16 package)",
                (None, None) => "not run (CUDA only)",
            }
        );
        rows.push(ExpertParity {
            expert: spec.name,
            format,
            precision,
            reference: key,
            fp32_max_abs_diff_sr: d_sr,
            fp32_max_abs_diff_feat: d_feat,
            fp16_psnr_sr_db: fp16,
            bf16_psnr_sr_db: bf16,
            fp32_ok,
            fp16_ok,
            forward_ms: ms,
            fp16_autocast_forward_ms: ms16,
        });
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({"device": a.device, "patch": a.patch, "scale": a.scale, "patches": a.patches, "experts": rows});
        srcache_formats::write_atomic(p, &serde_json::to_vec_pretty(&j)?)?;
    }
    Ok(())
}
