//! Expert features projected onto a cache's PCA basis (`feat/<expert>/pca`): what a fusion model trained on
//! the stored coefficients must be fed when the experts run on full images during training validation.

use srcache_formats::PcaBasis;
use tch::{Device, Tensor};

use crate::error::{torch, Result};

/// The projection onto `basis` as a 1×1 convolution on `device`: weight [k,C,1,1] (the components) and bias [k]
/// (−components·mean), so `conv(feat)` = components·(feat − mean) per pixel.
pub fn projection(basis: &PcaBasis, device: Device) -> Result<(Tensor, Tensor)> {
    let (k, c) = (basis.k as i64, basis.channels as i64);
    let w = Tensor::f_from_slice(&basis.components).and_then(|t| t.f_reshape([k, c])).map_err(torch("PCA weight"))?;
    let mean = Tensor::f_from_slice(&basis.mean).and_then(|t| t.f_reshape([c, 1])).map_err(torch("PCA mean"))?;
    let bias =
        w.f_matmul(&mean).and_then(|t| t.f_neg()).and_then(|t| t.f_reshape([k])).and_then(|t| t.f_to_device(device)).map_err(torch("PCA bias"))?;
    let w = w.f_reshape([k, c, 1, 1]).and_then(|t| t.f_to_device(device)).map_err(torch("PCA weight"))?;
    Ok((w, bias))
}

/// `feat` [B,C,h,w] (any device) → its coefficients [B,k,h,w] on the basis.
pub fn project(feat: &Tensor, basis: &PcaBasis) -> Result<Tensor> {
    let (w, b) = projection(basis, feat.device())?;
    feat.f_conv2d(&w, Some(&b), [1, 1], [0, 0], [1, 1], 1).map_err(torch("PCA projection of features"))
}
