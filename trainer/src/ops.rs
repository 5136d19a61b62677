//! Small differentiable building blocks shared by the model and the losses (all fallible, no panics).

use crate::error::{Result, TorchCtx};
use tch::{nn, Kind, Tensor};

/// 2-D convolution layer with its own weights so the forward pass can use `f_conv2d` (nn::Conv2D panics).
#[derive(Debug)]
pub struct Conv {
    pub w: Tensor,
    pub b: Tensor,
    pad: i64,
}

impl Conv {
    pub fn new(path: &nn::Path, cin: usize, cout: usize, k: usize) -> Self {
        let w = path.var("weight", &[cout as i64, cin as i64, k as i64, k as i64], nn::init::DEFAULT_KAIMING_UNIFORM);
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let b = path.var("bias", &[cout as i64], nn::Init::Uniform { lo: -bound, up: bound });
        Self { w, b, pad: (k / 2) as i64 }
    }

    /// Zero weights and bias: the layer outputs exactly 0 until training moves it, so heads start at their base.
    pub fn zeros(path: &nn::Path, cin: usize, cout: usize, k: usize) -> Self {
        let w = path.var("weight", &[cout as i64, cin as i64, k as i64, k as i64], nn::Init::Const(0.0));
        let b = path.var("bias", &[cout as i64], nn::Init::Const(0.0));
        Self { w, b, pad: (k / 2) as i64 }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_conv2d(&self.w, Some(&self.b), [1, 1], [self.pad, self.pad], [1, 1], 1).ctx("conv2d")
    }
}

// No sizes are read from the tensors here or in haar_idwt: under TorchScript tracing (the exported fusion.pt)
// a size read in Rust becomes a constant, and the traced model then only takes the example's batch and size.
fn quads(x: &Tensor) -> Result<[Tensor; 4]> {
    let e = |dy: i64, dx: i64| -> Result<Tensor> { x.f_slice(2, dy, None, 2)?.f_slice(3, dx, None, 2).ctx("haar slice") };
    Ok([e(0, 0)?, e(0, 1)?, e(1, 0)?, e(1, 1)?])
}

/// Orthonormal single-level Haar DWT: [B,C,H,W] -> (LL, LH, HL, HH), each [B,C,H/2,W/2]. H and W must be even.
pub fn haar_dwt(x: &Tensor) -> Result<[Tensor; 4]> {
    let s = x.size();
    if s.len() != 4 || s[2] % 2 != 0 || s[3] % 2 != 0 {
        return Err(crate::TrainerError::Config { what: "haar_dwt".into(), why: format!("needs even [B,C,H,W], got {s:?}") });
    }
    let [a, b, c, d] = quads(x)?;
    let ll = ((&a + &b + &c + &d) * 0.5).shallow_clone();
    let lh = ((&a + &b - &c - &d) * 0.5).shallow_clone();
    let hl = ((&a - &b + &c - &d) * 0.5).shallow_clone();
    let hh = ((&a - &b - &c + &d) * 0.5).shallow_clone();
    Ok([ll, lh, hl, hh])
}

/// Exact inverse of [`haar_dwt`].
pub fn haar_idwt(bands: &[Tensor; 4]) -> Result<Tensor> {
    let [ll, lh, hl, hh] = bands;
    let a = (ll + lh + hl + hh) * 0.5;
    let b = (ll + lh - hl - hh) * 0.5;
    let c = (ll - lh + hl - hh) * 0.5;
    let d = (ll - lh - hl + hh) * 0.5;
    // Interleave the four phases: [B,C,4,h,w] -> [B,4C,h,w] -> pixel shuffle puts channel 4c + 2dy + dx at
    // (2i + dy, 2j + dx), which is a, b, c, d's order.
    Tensor::f_stack(&[a, b, c, d], 2).and_then(|t| t.f_flatten(1, 2)).and_then(|t| t.f_pixel_shuffle(2)).ctx("idwt interleave")
}

/// Depthwise 2-D filter with a fixed kernel, replicate-padded so borders are not darkened.
pub fn depthwise(x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let c = x.size()[1];
    let k = kernel.size()[0];
    let p = k / 2;
    let w = kernel.f_to_kind(x.kind())?.f_to_device(x.device())?.f_view([1, 1, k, k])?.f_repeat([c, 1, 1, 1]).ctx("kernel")?;
    let xp = x.f_replication_pad2d([p, p, p, p]).ctx("pad")?;
    xp.f_conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], c).ctx("depthwise conv")
}

pub fn gaussian_kernel(size: i64, sigma: f64) -> Tensor {
    let half = (size - 1) as f64 / 2.0;
    let g: Vec<f32> = (0..size).map(|i| (-((i as f64 - half).powi(2)) / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = g.iter().sum();
    let g: Vec<f32> = g.iter().map(|v| v / sum).collect();
    let mut k = Vec::with_capacity((size * size) as usize);
    for a in &g {
        for b in &g {
            k.push(a * b);
        }
    }
    Tensor::from_slice(&k).view([size, size])
}

/// Sobel gradient magnitude components (gx, gy).
pub fn sobel(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let kx = Tensor::from_slice(&[-1f32, 0., 1., -2., 0., 2., -1., 0., 1.]).view([3, 3]);
    let ky = Tensor::from_slice(&[-1f32, -2., -1., 0., 0., 0., 1., 2., 1.]).view([3, 3]);
    Ok((depthwise(x, &kx)?, depthwise(x, &ky)?))
}

/// High-pass residual of a one-level Laplacian pyramid: x - blur(x). `blur` is [`gaussian_kernel`]`(5, 1.0)`,
/// created by the caller outside any TorchScript trace (tensors created while tracing are mis-recorded).
pub fn laplacian(x: &Tensor, blur: &Tensor) -> Result<Tensor> {
    Ok(x.f_sub(&depthwise(x, blur)?)?)
}

/// BT.601 luma on [0,1] RGB as BasicSR: 16/255 + (65.481 R + 128.553 G + 24.966 B)/255, in [0,1].
pub fn rgb_to_y(x: &Tensor) -> Result<Tensor> {
    let r = x.f_narrow(1, 0, 1)?;
    let g = x.f_narrow(1, 1, 1)?;
    let b = x.f_narrow(1, 2, 1).ctx("rgb_to_y")?;
    Ok((r * 65.481 + g * 128.553 + b * 24.966) / 255.0 + 16.0 / 255.0)
}

/// Bicubic upsampling (PyTorch's, a=-0.75, align_corners=false), as used for the model's lr input: the one
/// definition lives in `srcache_experts::image`, shared with full-image inference.
pub fn upsample_bicubic(lr: &Tensor, scale: u32) -> Result<Tensor> {
    Ok(srcache_experts::image::upsample_bicubic(lr, scale)?)
}

pub fn is_float(t: &Tensor) -> bool {
    matches!(t.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn haar_round_trip_is_exact_and_traces_size_free() {
        let x = Tensor::randn([2, 3, 6, 10], (Kind::Double, Device::Cpu));
        let back = haar_idwt(&haar_dwt(&x).expect("dwt")).expect("idwt");
        assert!(back.allclose(&x, 1e-12, 1e-12, false));
        // Traced at 1x3x4x4, run at 2x3x6x10: a size read in Rust would have been baked in.
        let ex = Tensor::randn([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let mut f = |xs: &[Tensor]| vec![haar_idwt(&haar_dwt(&xs[0]).expect("dwt")).expect("idwt")];
        let m = tch::CModule::create_by_tracing("Haar", "forward", &[ex], &mut f).expect("trace");
        let y = x.to_kind(Kind::Float);
        let out = m.forward_ts(&[&y]).expect("traced forward at another size");
        assert!(out.allclose(&y, 1e-5, 1e-5, false));
    }
}
