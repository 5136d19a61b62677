//! Full-image inference and scoring: the one path from an LR image to every method's SR image (MATLAB
//! bicubic, each expert, the fused result) and their PSNR/SSIM on Y with border crop = scale (BasicSR).

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::baselines::{self, Baselines};
use crate::benchmark::{BenchmarkFolder, BenchmarkImage};
use crate::error::{ExpertError, Result};
use crate::fusion::Fuser;
use crate::image::{image_to_tensor, tensor_to_image, upsample_bicubic};
use crate::stack::{ExpertOutputs, SrStack};

/// What `evaluate_folder`'s per-image callback may fail with (contact sheets, progress output).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Name of the literature baseline row (MATLAB `imresize` bicubic), distinct from the built-in `bicubic` expert.
pub const MATLAB_BICUBIC: &str = "matlab_bicubic";
pub const FUSED: &str = "fused";

/// The fusion model's inputs for one image, from the experts' outputs.
pub fn fuse_outputs(fuser: &dyn Fuser, lr: &Tensor, outs: &ExpertOutputs) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let lr_up = upsample_bicubic(&lr.f_to_device(Device::Cpu)?, fuser.spec().scale)?;
    fuser.fuse(&lr_up, &outs.srs, &outs.feats)
}

/// Every method's output for one LR image.
pub struct ImageResult {
    pub bicubic: RgbImage,
    pub experts: Vec<(String, RgbImage)>,
    pub fused: Option<RgbImage>,
    /// What ran differently from the request (see [`ExpertOutputs::notes`]).
    pub notes: Vec<String>,
}

/// Checks that a fusion model and a stack agree on the experts and their order.
pub fn check_compatible(stack: &SrStack, fuser: &dyn Fuser) -> Result<()> {
    let names = stack.names();
    if names != fuser.spec().experts {
        return Err(ExpertError::Fusion {
            path: "fusion model".into(),
            what: format!("trained on experts {:?}, but these experts are loaded: {names:?}", fuser.spec().experts),
        });
    }
    if fuser.spec().scale != stack.scale {
        return Err(ExpertError::Fusion {
            path: "fusion model".into(),
            what: format!("trained at x{}, run at x{}", fuser.spec().scale, stack.scale),
        });
    }
    Ok(())
}

/// Runs the experts (and the fusion model) over one full LR image.
pub fn run_image(stack: &SrStack, fuser: Option<&dyn Fuser>, lr: &RgbImage) -> Result<ImageResult> {
    let _g = tch::no_grad_guard();
    let x = image_to_tensor(lr, Device::Cpu)?;
    let want = fuser.map(|f| f.spec().wants_feat()).unwrap_or_default();
    let outs = stack.run(&x, &want)?;
    let experts = stack.names().into_iter().zip(&outs.srs).map(|(n, sr)| Ok((n, tensor_to_image(sr)?))).collect::<Result<Vec<_>>>()?;
    let fused = match fuser {
        Some(f) => Some(tensor_to_image(&fuse_outputs(f, &x, &outs)?)?),
        None => None,
    };
    Ok(ImageResult { bicubic: srcache_ingest::resize::bicubic_up(lr, stack.scale), experts, fused, notes: outs.notes })
}

/// (PSNR, SSIM) on Y, crop = scale, of `sr` against `hr` (BasicSR conventions).
pub fn score(sr: &RgbImage, hr: &RgbImage, scale: u32) -> (f64, f64) {
    (srcache_ingest::metrics::psnr_y(sr, hr, scale), srcache_ingest::metrics::ssim_y(sr, hr, scale))
}

/// Mean metrics of one method on one benchmark folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub dataset: String,
    pub method: String,
    pub psnr: f64,
    pub ssim: f64,
    pub images: usize,
}

/// Sums per method, in first-seen order.
#[derive(Default)]
pub struct Tally {
    sums: Vec<(String, f64, f64)>,
    n: usize,
}

impl Tally {
    pub fn add(&mut self, scores: &[(String, (f64, f64))]) {
        for (method, (p, s)) in scores {
            match self.sums.iter_mut().find(|(m, _, _)| m == method) {
                Some(e) => {
                    e.1 += p;
                    e.2 += s;
                }
                None => self.sums.push((method.clone(), *p, *s)),
            }
        }
        self.n += 1;
    }

    pub fn rows(&self, dataset: &str) -> Vec<Row> {
        let n = self.n.max(1) as f64;
        self.sums.iter().map(|(m, p, s)| Row { dataset: dataset.to_string(), method: m.clone(), psnr: p / n, ssim: s / n, images: self.n }).collect()
    }
}

/// Scores of every method of one image: MATLAB bicubic, each expert, fused. One row per method: when an expert
/// is MATLAB bicubic itself (pixel for pixel, e.g. a `bicubic` expert), the literature row would repeat it.
pub fn image_scores(r: &ImageResult, hr: &RgbImage, scale: u32) -> Vec<(String, (f64, f64))> {
    let mut v = Vec::new();
    if !r.experts.iter().any(|(_, img)| img == &r.bicubic) {
        v.push((MATLAB_BICUBIC.to_string(), score(&r.bicubic, hr, scale)));
    }
    v.extend(r.experts.iter().map(|(n, img)| (n.clone(), score(img, hr, scale))));
    if let Some(f) = &r.fused {
        v.push((FUSED.to_string(), score(f, hr, scale)));
    }
    v
}

/// Evaluates every image of `folder`; `on_image` sees each image and its results (contact sheets, progress).
/// Images that cannot be decoded are skipped and reported through `on_skip`.
pub fn evaluate_folder(
    stack: &SrStack,
    fuser: Option<&dyn Fuser>,
    folder: &BenchmarkFolder,
    on_image: &mut dyn FnMut(&BenchmarkImage, &ImageResult) -> std::result::Result<(), BoxError>,
    on_skip: &mut dyn FnMut(&ExpertError),
) -> Result<Vec<Row>> {
    evaluate_folder_with(stack, fuser, folder, &Baselines::none(), on_image, on_skip)
}

/// The scores of the `baselines` rows on one image (between the experts and the fused model in a table).
pub fn baseline_scores(stack: &SrStack, baselines: &Baselines, r: &ImageResult, img: &BenchmarkImage) -> Result<Vec<(String, (f64, f64))>> {
    let experts: Vec<&RgbImage> = r.experts.iter().map(|(_, i)| i).collect();
    let s = stack.scale;
    let mut v = Vec::new();
    if baselines.average && experts.len() >= 2 {
        v.push((baselines::AVERAGE.to_string(), score(&baselines::average(&experts), &img.hr, s)));
    }
    if let Some(i) = baselines.self_ensemble {
        let name = baselines::self_ensemble_name(&stack.names()[i.min(stack.experts.len().saturating_sub(1))]);
        v.push((name, score(&baselines::self_ensemble(stack, i, &img.lr)?, &img.hr, s)));
    }
    if let Some(w) = &baselines.blend {
        v.push((baselines::BLEND.to_string(), score(&baselines::blend(&experts, w), &img.hr, s)));
    }
    if baselines.oracle && experts.len() >= 2 {
        v.push((baselines::ORACLE.to_string(), score(&baselines::oracle(&experts, &img.hr), &img.hr, s)));
    }
    Ok(v)
}

/// [`evaluate_folder`] with baseline rows (see [`crate::baselines`]).
pub fn evaluate_folder_with(
    stack: &SrStack,
    fuser: Option<&dyn Fuser>,
    folder: &BenchmarkFolder,
    baselines: &Baselines,
    on_image: &mut dyn FnMut(&BenchmarkImage, &ImageResult) -> std::result::Result<(), BoxError>,
    on_skip: &mut dyn FnMut(&ExpertError),
) -> Result<Vec<Row>> {
    if let Some(f) = fuser {
        check_compatible(stack, f)?;
    }
    let mut tally = Tally::default();
    for i in 0..folder.entries.len() {
        let img = match folder.load(i) {
            Ok(img) => img,
            Err(e) => {
                on_skip(&e);
                continue;
            }
        };
        let r = run_image(stack, fuser, &img.lr)?;
        let mut scores = image_scores(&r, &img.hr, stack.scale);
        let fused = if scores.last().is_some_and(|(m, _)| m == FUSED) { scores.pop() } else { None };
        scores.extend(baseline_scores(stack, baselines, &r, &img)?);
        scores.extend(fused);
        tally.add(&scores);
        on_image(&img, &r).map_err(|source| ExpertError::Callback { source })?;
    }
    Ok(tally.rows(&folder.name))
}
