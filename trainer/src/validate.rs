//! Validation, two ways, each a table of fused vs every expert vs bicubic (PSNR/SSIM on Y, crop = scale,
//! u8-rounded, BasicSR conventions):
//! - held-out cached samples (split by source image): cheap, always available;
//! - full benchmark images (`val_dirs`): the number papers report. The frozen experts run once, tiled, when
//!   the set is prepared; each validation then runs only the fusion model on the stored expert outputs.

use crate::config::{FusionConfig, LoaderConfig, ShuffleMode, TrainConfig};
use crate::error::{Result, TorchCtx, TrainerError};
use crate::loader::{Loader, LoaderPosition};
use crate::metrics::{psnr_y, ssim_y, tensor_to_rgb8, Rgb8};
use crate::model::FusionNet;
use crate::ops::upsample_bicubic;

/// The held-out table's bicubic row: PyTorch's bicubic upsampling of the LR patch (not MATLAB's).
pub const TORCH_BICUBIC: &str = "torch_bicubic";
use serde::{Deserialize, Serialize};
use srcache_experts::benchmark::BenchmarkFolder;
use srcache_experts::evaluate::{fuse_outputs, score, MATLAB_BICUBIC};
use srcache_experts::image::{image_to_tensor, tensor_to_image};
use srcache_experts::{ExpertOutputs, SrStack, Tiling};
use srcache_formats::Dataset;
use std::path::PathBuf;
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
    /// What was evaluated: "held-out" (cached samples) or a `val_dirs` folder's name.
    #[serde(default)]
    pub source: String,
    /// Samples (held-out) or full images (val_dirs) averaged over.
    pub samples: usize,
    /// First row is "fused", then one per expert, then the bicubic baseline ("torch_bicubic": PyTorch's, on
    /// held-out samples; "matlab_bicubic": the papers' baseline, on full images).
    pub rows: Vec<ValRow>,
}

impl ValTable {
    pub fn fused(&self) -> &ValRow {
        &self.rows[0]
    }
    pub fn best_expert(&self) -> Option<&ValRow> {
        self.rows.get(1..self.rows.len().saturating_sub(1))?.iter().max_by(|a, b| a.psnr.total_cmp(&b.psnr))
    }
    pub fn row(&self, name: &str) -> Option<&ValRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

impl std::fmt::Display for ValTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.source == "held-out" || self.source.is_empty() {
            format!("{} held-out samples", self.samples)
        } else if self.source == crate::train::TRAIN_SCORE_SOURCE {
            format!("{} {}", self.samples, self.source)
        } else {
            format!("{}: {} full images", self.source, self.samples)
        };
        writeln!(f, "{:<24} {:>9} {:>8}   ({what}, Y, crop=scale)", "method", "PSNR", "SSIM")?;
        for r in &self.rows {
            writeln!(f, "{:<24} {:>9.3} {:>8.4}", r.name, r.psnr, r.ssim)?;
        }
        if let Some(b) = self.best_expert() {
            writeln!(f, "fused - best expert ({}): {:+.3} dB", b.name, self.fused().psnr - b.psnr)?;
        }
        Ok(())
    }
}

/// One validation: the tables and the numbers the run's metrics and checkpoint selection use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValReport {
    pub step: u64,
    pub held_out: Option<ValTable>,
    /// One table per `val_dirs` folder.
    pub full: Vec<ValTable>,
}

impl ValReport {
    /// The tables best-k selection reads: the full-image ones when there are any, else held-out.
    fn primary(&self) -> Vec<&ValTable> {
        if self.full.is_empty() {
            self.held_out.iter().collect()
        } else {
            self.full.iter().collect()
        }
    }
    fn mean(&self, f: impl Fn(&ValTable) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.primary().into_iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
    /// Fused PSNR (mean over the primary tables): the checkpoint-selection metric.
    pub fn psnr(&self) -> Option<f64> {
        self.mean(|t| Some(t.fused().psnr))
    }
    pub fn ssim(&self) -> Option<f64> {
        self.mean(|t| Some(t.fused().ssim))
    }
    /// The best single expert on the same tables (experts averaged over tables first).
    pub fn best_expert_psnr(&self) -> Option<f64> {
        self.best_expert_row().map(|(_, p)| p)
    }

    /// The row index (in the first primary table) and mean PSNR of the best single expert over the primary
    /// tables; on a tie, the first.
    fn best_expert_row(&self) -> Option<(usize, f64)> {
        let tables = self.primary();
        let first = tables.first()?;
        let n = first.rows.len().saturating_sub(2);
        (1..=n)
            .filter_map(|k| {
                let v: Vec<f64> = tables.iter().filter_map(|t| t.rows.get(k).map(|r| r.psnr)).collect();
                (v.len() == tables.len()).then(|| (k, v.iter().sum::<f64>() / v.len() as f64))
            })
            .fold(None, |best, (k, p)| match best {
                Some((_, b)) if b.total_cmp(&p).is_ge() => best,
                _ => Some((k, p)),
            })
    }

    /// "fused − best expert" on the primary tables (full images when there are any: the figure a paper
    /// reports; else held-out samples): (what it was measured on, the best expert's name, dB).
    pub fn margin(&self) -> Option<(String, String, f64)> {
        let tables = self.primary();
        let first = tables.first()?;
        let (k, best) = self.best_expert_row()?;
        let name = first.rows.get(k).map(|r| r.name.clone()).unwrap_or_default();
        let on = if self.full.is_empty() { first.source.clone() } else { tables.iter().map(|t| t.source.as_str()).collect::<Vec<_>>().join(", ") };
        Some((on, name, self.psnr()? - best))
    }
}

impl std::fmt::Display for ValReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "validation at step {}", self.step)?;
        for t in self.held_out.iter().chain(&self.full) {
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// The loader of the samples a validation scores (held-out table, contact sheet): whole patches, no
/// augmentation, one worker, the model's experts.
pub(crate) fn eval_loader_config(model: &FusionNet, cfg: &TrainConfig, batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        crop: None,
        dihedral: false,
        shuffle: ShuffleMode::Global,
        workers: 1,
        prefetch: 1,
        seed: cfg.seed,
        experts: model.cfg.experts.clone(),
        load_feats: cfg.loader.load_feats,
        stored_dtype: cfg.loader.stored_dtype,
        // A few batches per validation: pinning would cost more than the copies it speeds up.
        pin_device: None,
        // Read once per validation: nothing for a decoded cache to save.
        cache_decoded: false,
        cache_decoded_mib: 0,
    }
}

pub fn held_out(model: &FusionNet, ds: &Arc<Dataset>, val_idx: &[usize], cfg: &TrainConfig) -> Result<ValTable> {
    let n = val_idx.len().min(cfg.val_max_samples.max(1));
    let bs = cfg.loader.batch_size.min(n).max(1);
    let lc = eval_loader_config(model, cfg, bs);
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
    // Not "bicubic": an expert may well be called that (the built-in one), and two rows of one name is one
    // row too many. This is PyTorch's bicubic of the patch, the fusion model's `lr_up` input.
    names.push(TORCH_BICUBIC.to_string());
    let rows = names.into_iter().zip(acc).map(|(name, (p, s))| ValRow { name, psnr: p / count as f64, ssim: s / count as f64 }).collect();
    Ok(ValTable { source: "held-out".into(), samples: count, rows })
}

/// One prepared validation image: HR (mod-cropped), its LR, and what the frozen experts made of it.
struct ValImage {
    hr: image::RgbImage,
    lr: Tensor,
    experts: ExpertOutputs,
}

/// One `val_dirs` folder, with the metrics of everything that does not change during training.
struct ValDir {
    name: String,
    images: Vec<ValImage>,
    /// Per image: (PSNR, SSIM) of each expert, then MATLAB bicubic.
    fixed: Vec<Vec<(f64, f64)>>,
}

/// The full-image validation set: built once per run, evaluated at every validation.
pub struct FullImageVal {
    dirs: Vec<ValDir>,
    experts: Vec<String>,
    /// Images left out (unpaired HR, undecodable, or an LR of the wrong size): (file, reason).
    pub skipped: Skipped,
}

impl FullImageVal {
    /// Loads the experts `model` fuses from the dataset's schema, reads each `cfg.val_dirs` folder
    /// (benchmark layout, LR made with MATLAB bicubic when `LR_bicubic/X<scale>` is absent), runs the experts
    /// once per image in tiles of `cfg.val_tile` (0 = the cache's patch size) and scores them.
    pub fn prepare(cfg: &TrainConfig, model: &FusionConfig, ds: &Dataset) -> Result<Self> {
        let scale = model.scale;
        let patch = ds.schema().and_then(|s| s.patch());
        let tile = if cfg.val_tile > 0 { cfg.val_tile } else { patch.unwrap_or(64) };
        let tiling = Tiling { tile: tile as i64, overlap: cfg.val_tile_overlap as i64 };
        let sources = srcache_experts::sources_from_dataset(ds, &model.experts)?;
        let stack = SrStack::assemble(sources, Some(ds), Some(scale), cfg.device()?, tiling)?;
        let want = crate::model::wants_feat(model);
        let mut dirs = Vec::new();
        let mut skipped = Vec::new();
        for dir in &cfg.val_dirs {
            let folder = BenchmarkFolder::scan(dir, scale, cfg.val_max_images)?;
            skipped.extend(folder.skipped.iter().map(|s| (s.path.clone(), s.reason.clone())));
            let mut images = Vec::new();
            let mut fixed = Vec::new();
            for i in 0..folder.entries.len() {
                // As `srcache eval` does: an image that cannot be used is reported and left out.
                let img = match folder.load(i) {
                    Ok(img) => img,
                    Err(e) => {
                        skipped.push((folder.entries[i].hr.clone(), srcache_formats::error_chain(&e)));
                        continue;
                    }
                };
                let lr = image_to_tensor(&img.lr, tch::Device::Cpu)?;
                let mut outs = stack.run(&lr, &want)?;
                // The model takes the PCA coefficients the cache stored for such experts, not their full features.
                let with_feat = (0..model.experts.len()).filter(|&i| want.get(i).copied().unwrap_or(false));
                for (f, i) in outs.feats.iter_mut().zip(with_feat) {
                    if let Some(Some(b)) = model.feat_pca.get(i) {
                        *f = srcache_experts::pca::project(f, b)?;
                    }
                }
                let mut m = Vec::with_capacity(outs.srs.len() + 1);
                for sr in &outs.srs {
                    m.push(score(&tensor_to_image(sr)?, &img.hr, scale));
                }
                m.push(score(&srcache_ingest::resize::bicubic_up(&img.lr, scale), &img.hr, scale));
                fixed.push(m);
                images.push(ValImage { hr: img.hr, lr, experts: outs });
            }
            if images.is_empty() {
                return Err(TrainerError::Data { path: dir.clone(), why: "no validation images (HR/ + LR_bicubic/X<scale>/)".into() });
            }
            dirs.push(ValDir { name: folder.name, images, fixed });
        }
        Ok(Self { dirs, experts: model.experts.clone(), skipped })
    }

    pub fn images(&self) -> usize {
        self.dirs.iter().map(|d| d.images.len()).sum()
    }

    /// Runs `model` on every image (whole image at once, as `srcache infer` runs the exported model) and
    /// returns one table per folder.
    pub fn evaluate(&self, model: &FusionNet) -> Result<Vec<ValTable>> {
        if model.cfg.experts != self.experts {
            return Err(TrainerError::Config {
                what: "full-image validation".into(),
                why: format!("model fuses {:?}, the set was prepared for {:?}", model.cfg.experts, self.experts),
            });
        }
        let _g = tch::no_grad_guard();
        let scale = model.cfg.scale;
        let mut tables = Vec::new();
        for d in &self.dirs {
            let mut acc = vec![(0.0, 0.0); self.experts.len() + 2];
            for (img, fixed) in d.images.iter().zip(&d.fixed) {
                let fused = fuse_outputs(model, &img.lr, &img.experts)?;
                let m = score(&tensor_to_image(&fused)?, &img.hr, scale);
                for (a, v) in acc.iter_mut().zip(std::iter::once(&m).chain(fixed)) {
                    a.0 += v.0;
                    a.1 += v.1;
                }
            }
            let n = d.images.len() as f64;
            let names = std::iter::once("fused".to_string()).chain(self.experts.iter().cloned()).chain(std::iter::once(MATLAB_BICUBIC.to_string()));
            let rows = names.zip(acc).map(|(name, (p, s))| ValRow { name, psnr: p / n, ssim: s / n }).collect();
            tables.push(ValTable { source: d.name.clone(), samples: d.images.len(), rows });
        }
        Ok(tables)
    }
}

/// (file, reason) of images left out of validation.
type Skipped = Vec<(PathBuf, String)>;
