//! Between RGB8 images and tensors, the one way every stage does it: [0,1] floats, CHW, u8 rounding and
//! clamping as BasicSR's `tensor2img`, and PyTorch bicubic for the fusion model's upsampled LR input.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::error::{torch, ExpertError, Result};

/// RGB8 → [1,3,H,W] f32 in [0,1] on `device`.
pub fn image_to_tensor(img: &RgbImage, device: Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    Tensor::f_from_slice(img.as_raw())
        .and_then(|t| t.f_view([h as i64, w as i64, 3]))
        .and_then(|t| t.f_permute([2, 0, 1]))
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_div_scalar(255.0))
        .and_then(|t| t.f_unsqueeze(0))
        .and_then(|t| t.f_to_device(device))
        .map_err(torch("image to tensor"))
}

/// [3,H,W] float tensor in [0,1] → HWC u8 (clamped, rounded), the form every reported metric is computed on.
pub fn tensor_to_rgb8(t: &Tensor) -> Result<(Vec<u8>, usize, usize)> {
    let s = t.size();
    if s.len() != 3 || s[0] != 3 {
        return Err(ExpertError::Torch {
            context: format!("image tensor: expected [3,H,W], got {s:?}"),
            source: tch::TchError::Shape(format!("{s:?}")).into(),
        });
    }
    let u = t
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_clamp(0.0, 1.0))
        .and_then(|t| t.f_mul_scalar(255.0))
        .and_then(|t| t.f_round())
        .and_then(|t| t.f_to_kind(Kind::Uint8))
        .and_then(|t| t.f_permute([1, 2, 0]))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_to_device(Device::Cpu))
        .map_err(torch("tensor to rgb8"))?;
    let mut v = vec![0u8; u.numel()];
    u.f_copy_data(&mut v, u.numel()).map_err(torch("copy rgb8"))?;
    Ok((v, s[2] as usize, s[1] as usize))
}

/// [1,3,H,W] (or [3,H,W]) in [0,1] → RGB8.
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let t = if t.dim() == 4 { t.f_squeeze_dim(0).map_err(torch("squeeze"))? } else { t.shallow_clone() };
    let (data, w, h) = tensor_to_rgb8(&t)?;
    RgbImage::from_raw(w as u32, h as u32, data).ok_or_else(|| ExpertError::Torch {
        context: format!("image tensor {w}x{h} does not match its data"),
        source: tch::TchError::Shape(format!("{w}x{h}")).into(),
    })
}

/// PyTorch bicubic upsampling (a = -0.75, align_corners = false): the fusion model's `lr_up` input, in
/// training (from the loader's LR patches) and at inference (from full LR images) alike.
pub fn upsample_bicubic(lr: &Tensor, scale: u32) -> Result<Tensor> {
    let s = lr.size();
    if s.len() != 4 {
        return Err(ExpertError::Torch {
            context: format!("bicubic upsample of {s:?}"),
            source: tch::TchError::Shape("need [B,C,H,W]".into()).into(),
        });
    }
    lr.f_upsample_bicubic2d([s[2] * scale as i64, s[3] * scale as i64], false, None, None).map_err(torch("bicubic upsample"))
}
