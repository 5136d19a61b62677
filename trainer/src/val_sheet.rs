//! The validation contact sheet: a few validation samples, one per row — bicubic, every expert, the fused
//! output (the EMA model), HR — each labelled with its Y-PSNR. Written to `<run>/val_sheet.png` (+ `.svg`) at
//! every validation and, when TensorBoard is on, as the image summary `val/sheet` at that step.

use crate::config::TrainConfig;
use crate::error::{Result, TorchCtx};
use crate::loader::{Loader, LoaderPosition};
use crate::metrics::{psnr_y, tensor_to_rgb8, Rgb8};
use crate::model::FusionNet;
use crate::ops::upsample_bicubic;
use crate::plot::{Sheet, Tile};
use image::RgbImage;
use srcache_formats::Dataset;
use std::sync::Arc;

/// Samples shown (the first ones of the validation set, so every validation shows the same ones).
pub const SHEET_SAMPLES: usize = 4;
/// Tiles are the HR patch enlarged by a whole zoom to at least this many pixels a side.
const MIN_TILE: u32 = 96;

/// Builds the sheet for the first [`SHEET_SAMPLES`] of `idx`; None when `idx` is empty.
pub fn build(model: &FusionNet, ds: &Arc<Dataset>, idx: &[usize], cfg: &TrainConfig) -> Result<Option<Sheet>> {
    let n = idx.len().min(SHEET_SAMPLES);
    if n == 0 {
        return Ok(None);
    }
    let lc = crate::validate::eval_loader_config(model, cfg, n);
    let mut loader = Loader::new(ds.clone(), idx[..n].to_vec(), &lc, LoaderPosition::default())?;
    let _g = tch::no_grad_guard();
    let b = loader.next_batch()?.to_device(model.device())?;
    let lr_up = upsample_bicubic(&b.lr, model.cfg.scale)?;
    let fused = model.forward(&lr_up, &b.sr, &b.feat)?;
    let mut cols: Vec<(String, &tch::Tensor)> = vec![("Bicubic".into(), &lr_up)];
    cols.extend(model.cfg.experts.iter().cloned().zip(b.sr.iter()));
    cols.push(("Fused".into(), &fused));
    let scale = model.cfg.scale as usize;
    let mut cells = Vec::new();
    let mut tile = (0, 0);
    for i in 0..b.lr.size()[0] {
        let (hr, w, h) = tensor_to_rgb8(&b.hr.f_get(i).ctx("hr item")?)?;
        let zoom = MIN_TILE.div_ceil(w.min(h).max(1) as u32).max(1);
        tile = (w as u32 * zoom, h as u32 * zoom);
        let big = |data: Vec<u8>| RgbImage::from_raw(w as u32, h as u32, data).map(|img| crate::plot::resize_nearest(&img, tile.0, tile.1));
        for (name, t) in &cols {
            let (x, _, _) = tensor_to_rgb8(&t.f_get(i).ctx("item")?)?;
            let psnr = psnr_y(&Rgb8 { data: &x, w, h }, &Rgb8 { data: &hr, w, h }, scale).min(100.0);
            cells.push(big(x).map(|img| Tile { label: format!("{name} {psnr:.2} dB"), img }));
        }
        cells.push(big(hr).map(|img| Tile { label: "HR".into(), img }));
    }
    Ok(Some(Sheet { cols: cols.len() + 1, tile, cells }))
}
