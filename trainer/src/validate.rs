//! Validation on held-out cached samples (split by source image): PSNR/SSIM on Y, crop = scale, u8-rounded,
//! for the fused output, every expert and bicubic — the table that says whether fusion beats its inputs.

use crate::config::{LoaderConfig, ShuffleMode, TrainConfig};
use crate::error::{Result, TorchCtx};
use crate::loader::{Loader, LoaderPosition};
use crate::metrics::{psnr_y, ssim_y, tensor_to_rgb8, Rgb8};
use crate::model::FusionNet;
use crate::ops::upsample_bicubic;
use serde::{Deserialize, Serialize};
use srcache_formats::Dataset;
use std::sync::Arc;
use tch::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValRow {
    pub name: String,
    pub psnr: f64,
    pub ssim: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValTable {
    pub samples: usize,
    /// First row is "fused", then one per expert, then "bicubic".
    pub rows: Vec<ValRow>,
}

impl ValTable {
    pub fn fused(&self) -> &ValRow {
        &self.rows[0]
    }
    pub fn best_expert(&self) -> Option<&ValRow> {
        self.rows[1..self.rows.len() - 1].iter().max_by(|a, b| a.psnr.total_cmp(&b.psnr))
    }
}

impl std::fmt::Display for ValTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<24} {:>9} {:>8}   ({} held-out samples, Y, crop=scale)", "method", "PSNR", "SSIM", self.samples)?;
        for r in &self.rows {
            writeln!(f, "{:<24} {:>9.3} {:>8.4}", r.name, r.psnr, r.ssim)?;
        }
        Ok(())
    }
}

pub fn held_out(model: &FusionNet, ds: &Arc<Dataset>, val_idx: &[usize], cfg: &TrainConfig) -> Result<ValTable> {
    let n = val_idx.len().min(cfg.val_max_samples.max(1));
    let bs = cfg.loader.batch_size.min(n).max(1);
    let lc = LoaderConfig {
        batch_size: bs,
        crop: None,
        dihedral: false,
        shuffle: ShuffleMode::Global,
        workers: 1,
        prefetch: 1,
        seed: cfg.seed,
        experts: model.cfg.experts.clone(),
        load_feats: cfg.loader.load_feats,
    };
    let mut loader = Loader::new(ds.clone(), val_idx.to_vec(), &lc, LoaderPosition::default())?;
    let scale = model.cfg.scale as usize;
    let e = model.cfg.experts.len();
    let mut acc = vec![(0.0f64, 0.0f64); e + 2];
    let mut count = 0usize;
    let _g = tch::no_grad_guard();
    for _ in 0..(n / bs).max(1) {
        let b = loader.next_batch()?.to_device(model.device())?;
        let lr_up = upsample_bicubic(&b.lr, model.cfg.scale)?;
        let fused = model.forward(&lr_up, &b.sr, &b.feat)?;
        let mut cands: Vec<&Tensor> = vec![&fused];
        cands.extend(b.sr.iter());
        cands.push(&lr_up);
        for i in 0..b.lr.size()[0] {
            let (hr, w, h) = tensor_to_rgb8(&b.hr.f_get(i).ctx("hr item")?)?;
            let hr = Rgb8 { data: &hr, w, h };
            for (k, c) in cands.iter().enumerate() {
                let (x, _, _) = tensor_to_rgb8(&c.f_get(i).ctx("item")?)?;
                let x = Rgb8 { data: &x, w, h };
                acc[k].0 += psnr_y(&x, &hr, scale).min(100.0);
                acc[k].1 += ssim_y(&x, &hr, scale);
            }
            count += 1;
        }
    }
    let mut names = vec!["fused".to_string()];
    names.extend(model.cfg.experts.iter().cloned());
    names.push("bicubic".to_string());
    let rows = names.into_iter().zip(acc).map(|(name, (p, s))| ValRow { name, psnr: p / count as f64, ssim: s / count as f64 }).collect();
    Ok(ValTable { samples: count, rows })
}
