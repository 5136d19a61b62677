//! The built-in analytic experts, written in tch: no file, any device, any input size. They exist for the
//! demo and the tests, and as baselines with distinct error profiles.

use tch::{Device, Kind, Tensor};

use crate::error::{torch, Result};
use crate::source::Builtin;

/// Fixed filter banks, built once per device.
pub(crate) struct Filters {
    /// Lanczos phases: horizontal [s,1,1,7] and vertical [s,1,7,1].
    lanczos_h: Tensor,
    lanczos_v: Tensor,
    /// 5×5 gaussian, depthwise over 3 channels: [3,1,5,5].
    gauss: Tensor,
    /// Feature bank over luma: sobel x, sobel y, laplacian, 3×3 box: [4,1,3,3].
    feat: Tensor,
}

fn lanczos(x: f64, a: f64) -> f64 {
    if x.abs() < 1e-12 {
        return 1.0;
    }
    if x.abs() >= a {
        return 0.0;
    }
    let px = std::f64::consts::PI * x;
    a * px.sin() * (px / a).sin() / (px * px)
}

impl Filters {
    pub(crate) fn new(scale: u32, device: Device) -> Result<Filters> {
        let s = scale as usize;
        // Output pixel i = j·s + p samples LR coordinate j + (p + 0.5)/s - 0.5; taps at j-3..=j+3.
        let mut taps = Vec::with_capacity(s * 7);
        for p in 0..s {
            let c = (p as f64 + 0.5) / s as f64 - 0.5;
            let w: Vec<f64> = (-3..=3).map(|k| lanczos(c - k as f64, 3.0)).collect();
            let sum: f64 = w.iter().sum();
            taps.extend(w.iter().map(|v| (v / sum) as f32));
        }
        let g1: Vec<f64> = (-2..=2).map(|k: i32| (-(k * k) as f64 / 2.0).exp()).collect();
        let gs: f64 = g1.iter().sum();
        let mut gauss = Vec::with_capacity(3 * 25);
        for _ in 0..3 {
            for a in &g1 {
                for b in &g1 {
                    gauss.push((a * b / (gs * gs)) as f32);
                }
            }
        }
        #[rustfmt::skip]
        let feat: [f32; 36] = [
            -1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0,
            -1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0,
            0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0,
            1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0, 1.0 / 9.0,
        ];
        let mk = |v: &[f32], shape: &[i64]| Tensor::f_from_slice(v).and_then(|t| t.f_reshape(shape)).and_then(|t| t.f_to_device(device));
        let s = scale as i64;
        Ok(Filters {
            lanczos_h: mk(&taps, &[s, 1, 1, 7]).map_err(torch("lanczos taps"))?,
            lanczos_v: mk(&taps, &[s, 1, 7, 1]).map_err(torch("lanczos taps"))?,
            gauss: mk(&gauss, &[3, 1, 5, 5]).map_err(torch("gaussian"))?,
            feat: mk(&feat, &[4, 1, 3, 3]).map_err(torch("feature filters"))?,
        })
    }
}

pub(crate) fn builtin_forward(which: Builtin, f: &Filters, lr: &Tensor, scale: u32) -> std::result::Result<(Tensor, Option<Tensor>), tch::TchError> {
    let size = lr.size();
    let (b, h, w) = (size[0], size[2], size[3]);
    let s = scale as i64;
    let lr = lr.f_to_kind(Kind::Float)?;
    let bicubic = || lr.f_upsample_bicubic2d([s * h, s * w], false, s as f64, s as f64);
    let sr = match which {
        Builtin::Bicubic => bicubic()?,
        Builtin::SharpBicubic => {
            let up = bicubic()?;
            let blur = up.f_replication_pad2d([2, 2, 2, 2])?.f_conv2d(&f.gauss, None::<Tensor>, [1, 1], [0, 0], [1, 1], 3)?;
            let detail = up.f_sub(&blur)?;
            up.f_add(&detail.f_mul_scalar(0.6)?)?
        }
        Builtin::Lanczos3 => {
            let x = lr.f_reshape([b * 3, 1, h, w])?;
            let x = x.f_replication_pad2d([3, 3, 0, 0])?.f_conv2d(&f.lanczos_h, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
            // [N, s, h, w] -> [N, 1, h, w·s]: phase p lands at column j·s + p.
            let x = x.f_permute([0, 2, 3, 1])?.f_reshape([b * 3, 1, h, w * s])?;
            let x = x.f_replication_pad2d([0, 0, 3, 3])?.f_conv2d(&f.lanczos_v, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
            x.f_permute([0, 2, 1, 3])?.f_reshape([b, 3, h * s, w * s])?
        }
    };
    let sr = sr.f_clamp(0.0, 1.0)?;
    // Fixed-filter responses of the luma at LR size: cheap, but a real [B,C,h,w] feature to cache.
    let coeffs = Tensor::f_from_slice(&[0.299f32, 0.587, 0.114])?.f_reshape([1, 3, 1, 1])?.f_to_device(lr.device())?;
    let y = lr.f_mul(&coeffs)?.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?;
    let feat = y.f_replication_pad2d([1, 1, 1, 1])?.f_conv2d(&f.feat, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
    Ok((sr, Some(feat)))
}
