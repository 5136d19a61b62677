//! Reconstruction losses. Each returns a scalar tensor; [`total`] weighs them and reports every active term.

use crate::config::LossWeights;
use crate::error::{Result, TorchCtx};
use crate::ops::{depthwise, gaussian_kernel, haar_dwt, sobel};
use tch::{Kind, Tensor};

pub fn l1(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    x.f_sub(y)?.f_abs()?.f_mean(Kind::Float).ctx("l1")
}

pub fn charbonnier(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let d = x.f_sub(y)?;
    d.f_mul(&d)?.f_add_scalar(1e-6)?.f_sqrt()?.f_mean(Kind::Float).ctx("charbonnier")
}

/// Mean SSIM (Gaussian window 11, σ 1.5, C1=(0.01)², C2=(0.03)² for data in [0,1]), per channel.
pub fn ssim(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let k = gaussian_kernel(11, 1.5);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mx = depthwise(x, &k)?;
    let my = depthwise(y, &k)?;
    let sxx = depthwise(&x.f_mul(x)?, &k)?.f_sub(&mx.f_mul(&mx)?)?;
    let syy = depthwise(&y.f_mul(y)?, &k)?.f_sub(&my.f_mul(&my)?)?;
    let sxy = depthwise(&x.f_mul(y)?, &k)?.f_sub(&mx.f_mul(&my)?)?;
    let num = (mx.f_mul(&my)? * 2.0 + c1).f_mul(&(sxy * 2.0 + c2))?;
    let den = (mx.f_mul(&mx)? + my.f_mul(&my)? + c1).f_mul(&(sxx + syy + c2))?;
    num.f_div(&den)?.f_mean(Kind::Float).ctx("ssim")
}

pub fn ssim_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(ssim(x, y)?.f_neg()? + 1.0)
}

/// L1 between FFT amplitude spectra (orthonormal rfft2): penalises missing high-frequency energy.
pub fn fft_amplitude(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let fx = x.f_to_kind(Kind::Float)?.f_fft_rfft2(None::<&[i64]>, [-2, -1], "ortho")?.f_abs()?;
    let fy = y.f_to_kind(Kind::Float)?.f_fft_rfft2(None::<&[i64]>, [-2, -1], "ortho")?.f_abs()?;
    l1(&fx, &fy)
}

pub fn sobel_edge(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (gx, gy) = sobel(x)?;
    let (hx, hy) = sobel(y)?;
    Ok(l1(&gx, &hx)? + l1(&gy, &hy)?)
}

/// L1 on the three detail bands of a one-level Haar DWT (the LL band is what L1/Charbonnier already cover).
pub fn haar_wavelet(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let bx = haar_dwt(x)?;
    let by = haar_dwt(y)?;
    let mut acc = l1(&bx[1], &by[1])?;
    for k in 2..4 {
        acc = acc.f_add(&l1(&bx[k], &by[k])?).ctx("wavelet")?;
    }
    Ok(acc / 3.0)
}

pub const LOSS_NAMES: [&str; 6] = ["l1", "charbonnier", "ssim", "fft", "edge", "wavelet"];

/// One loss term: (output, target) -> scalar.
type LossFn = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Weighted sum of the active terms plus each term's value (name, value) for logging.
pub fn total(x: &Tensor, y: &Tensor, w: &LossWeights) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
    let mut parts: Vec<(&'static str, Tensor)> = Vec::new();
    let mut sum: Option<Tensor> = None;
    let terms: [(&'static str, f64, LossFn); 6] = [
        ("l1", w.l1, l1),
        ("charbonnier", w.charbonnier, charbonnier),
        ("ssim", w.ssim, ssim_loss),
        ("fft", w.fft, fft_amplitude),
        ("edge", w.edge, sobel_edge),
        ("wavelet", w.wavelet, haar_wavelet),
    ];
    for (name, weight, f) in terms {
        if weight == 0.0 {
            continue;
        }
        let v = f(x, y)?;
        let wv = v.f_mul_scalar(weight).ctx(name)?;
        sum = Some(match sum {
            Some(s) => s.f_add(&wv).ctx("loss sum")?,
            None => wv,
        });
        parts.push((name, v.detach()));
    }
    let sum = sum.ok_or_else(|| crate::TrainerError::Config { what: "loss.weights".into(), why: "every weight is 0".into() })?;
    Ok((sum, parts))
}
