//! The baselines a reviewer asks a fusion model to beat, computed beside the experts in every `srcache eval`
//! table: the plain average of the experts, the best expert's ×8 geometric self-ensemble (flips + rot90, the
//! EDSR "+" protocol), a least-squares linear blend of the experts fitted on the training cache, and the oracle
//! per-pixel best expert (an upper bound for any per-pixel selection, not a method: it looks at the HR image).

use image::RgbImage;
use srcache_formats::{DType, Dataset, TensorName};
use tch::{Device, Tensor};

use crate::error::{torch, ExpertError, Result};
use crate::image::{image_to_tensor, tensor_to_image};
use crate::stack::SrStack;

/// Row names. Spelled so a reader of the table cannot mistake a baseline for an expert.
pub const AVERAGE: &str = "average(experts)";
pub const BLEND: &str = "ls-blend(cache)";
pub const ORACLE: &str = "oracle(bound)";

/// `hat+x8`: the self-ensemble row of an expert.
pub fn self_ensemble_name(expert: &str) -> String {
    format!("{expert}+x8")
}

/// Which baselines to compute for each image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baselines {
    pub average: bool,
    /// Index (in the stack's order) of the expert whose ×8 self-ensemble is a row: the best single expert.
    pub self_ensemble: Option<usize>,
    /// Weights per expert, then a bias, of the least-squares blend (fitted by [`fit_blend`]).
    pub blend: Option<Vec<f64>>,
    pub oracle: bool,
}

impl Baselines {
    pub fn none() -> Baselines {
        Baselines::default()
    }
}

/// The expert with the highest mean PSNR in a cache's manifest (the `psnr/<expert>` columns): "the best
/// single expert" as measured on the training data, so the choice never looks at the evaluation images.
pub fn best_in_cache(ds: &Dataset, names: &[String]) -> Option<usize> {
    let mean = |name: &str| {
        let (sum, n) = ds.manifest().iter().filter_map(|r| r.psnr.get(name)).fold((0.0f64, 0usize), |(s, n), &p| (s + p as f64, n + 1));
        (n > 0).then(|| sum / n as f64)
    };
    names.iter().enumerate().filter_map(|(i, n)| mean(n).map(|m| (i, m))).max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i)
}

/// Least-squares weights `w` (one per expert, then a bias) minimising Σ (Σ_i w_i·sr_i + b − hr)² over the
/// pixels of up to `max_samples` evenly spread cache samples, values in [0,1]. Normal equations in f64 with a
/// tiny ridge (experts are strongly correlated). Errors when an expert has no `sr/` tensor in the cache.
pub fn fit_blend(ds: &Dataset, names: &[String], max_samples: usize) -> Result<Vec<f64>> {
    let schema = ds.schema().ok_or_else(|| ExpertError::Baseline { which: BLEND, what: "the cache has no shards".into() })?;
    let hr_name = TensorName::Hr.to_string();
    let mut tensors = vec![hr_name];
    tensors.extend(names.iter().map(|n| TensorName::sr(n.as_str()).to_string()));
    for t in &tensors {
        if schema.index_of(t).is_none() {
            return Err(ExpertError::Baseline { which: BLEND, what: format!("the cache has no tensor {t} to fit on") });
        }
    }
    let e = names.len();
    let d = e + 1;
    let (mut ata, mut atb) = (vec![0f64; d * d], vec![0f64; d]);
    let n = ds.len().min(max_samples.max(1));
    for k in 0..n {
        let (shard, i) = ds.sample(k * ds.len() / n)?;
        let mut planes = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let v = shard.tensor(i, t)?;
            let norm = if v.spec().dtype == DType::U8 { 1.0 / 255.0 } else { 1.0 };
            planes.push(v.to_f32()?.into_iter().map(|x| x * norm).collect::<Vec<f32>>());
        }
        let (hr, srs) = planes.split_first().ok_or_else(|| ExpertError::Baseline { which: BLEND, what: "a cache sample without tensors".into() })?;
        let mut row = vec![0f64; d];
        for p in 0..hr.len() {
            for (j, s) in srs.iter().enumerate() {
                row[j] = s[p] as f64;
            }
            row[e] = 1.0;
            for a in 0..d {
                atb[a] += row[a] * hr[p] as f64;
                for b in 0..d {
                    ata[a * d + b] += row[a] * row[b];
                }
            }
        }
    }
    let scale = (0..d).map(|a| ata[a * d + a]).fold(0.0, f64::max).max(1.0);
    for a in 0..d {
        ata[a * d + a] += 1e-9 * scale;
    }
    solve(ata, atb, d).ok_or_else(|| ExpertError::Baseline { which: BLEND, what: "its normal equations are singular".into() })
}

/// Gaussian elimination with partial pivoting on a small dense system.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| a[x * n + c].abs().total_cmp(&a[y * n + c].abs()))?;
        if a[p * n + c].abs() < 1e-300 {
            return None;
        }
        for k in 0..n {
            a.swap(c * n + k, p * n + k);
        }
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r * n + c] / a[c * n + c];
            for k in c..n {
                a[r * n + k] -= f * a[c * n + k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0f64; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    Some(x)
}

/// Per pixel, a function of the experts' values (channel-interleaved RGB8, one slice per expert).
fn per_pixel(experts: &[&RgbImage], f: impl Fn(&[&[u8]], usize) -> [u8; 3]) -> RgbImage {
    let (w, h) = experts.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let raws: Vec<&[u8]> = experts.iter().map(|i| i.as_raw().as_slice()).collect();
    let mut out = RgbImage::new(w, h);
    for (p, px) in out.pixels_mut().enumerate() {
        px.0 = f(&raws, p * 3);
    }
    out
}

/// The plain average of the experts' images (rounded): what one gets by averaging saved outputs.
pub fn average(experts: &[&RgbImage]) -> RgbImage {
    let n = experts.len().max(1) as f32;
    per_pixel(experts, |raws, o| std::array::from_fn(|c| (raws.iter().map(|r| r[o + c] as f32).sum::<f32>() / n).round() as u8))
}

/// `Σ w_i·sr_i + b`, clamped and rounded.
pub fn blend(experts: &[&RgbImage], w: &[f64]) -> RgbImage {
    let bias = w.get(experts.len()).copied().unwrap_or(0.0) * 255.0;
    per_pixel(experts, |raws, o| {
        std::array::from_fn(|c| {
            let v: f64 = raws.iter().zip(w).map(|(r, &wi)| wi * r[o + c] as f64).sum::<f64>() + bias;
            v.round().clamp(0.0, 255.0) as u8
        })
    })
}

/// Per pixel, the expert closest to the HR image (squared error over RGB): the best any per-pixel selection of
/// these experts could do. Needs HR, so it is a bound, never a method.
pub fn oracle(experts: &[&RgbImage], hr: &RgbImage) -> RgbImage {
    let hr = hr.as_raw();
    per_pixel(experts, |raws, o| {
        let err = |r: &[u8]| (0..3).map(|c| (r[o + c] as i32 - hr[o + c] as i32).pow(2)).sum::<i32>();
        let best = raws.iter().min_by_key(|r| err(r)).copied().unwrap_or(&[0, 0, 0][..]);
        [best[o], best[o + 1], best[o + 2]]
    })
}

/// Dihedral transform `d` (0..8) of a [B,C,H,W] tensor: rot90 `d % 4` times, then a horizontal flip when
/// `d >= 4`; [`inverse`] undoes it.
fn forward(t: &Tensor, d: usize) -> std::result::Result<Tensor, tch::TchError> {
    let r = t.f_rot90((d % 4) as i64, [2, 3])?;
    if d >= 4 {
        r.f_flip([3])
    } else {
        Ok(r)
    }
}

fn inverse(t: &Tensor, d: usize) -> std::result::Result<Tensor, tch::TchError> {
    let f = if d >= 4 { t.f_flip([3])? } else { t.shallow_clone() };
    f.f_rot90(-((d % 4) as i64), [2, 3])
}

/// The ×8 geometric self-ensemble of expert `index` of `stack` on one LR image (EDSR's "+"): the expert runs on
/// the 8 flips/rotations of the input, each output is transformed back, and the 8 are averaged before rounding.
pub fn self_ensemble(stack: &SrStack, index: usize, lr: &RgbImage) -> Result<RgbImage> {
    let _g = tch::no_grad_guard();
    let x = image_to_tensor(lr, Device::Cpu)?;
    let mut acc: Option<Tensor> = None;
    for d in 0..8 {
        let xd = forward(&x, d).map_err(torch("self-ensemble: transform the input"))?;
        let sr = stack.run_one(index, &xd)?;
        let back = inverse(&sr, d).map_err(torch("self-ensemble: transform the output back"))?;
        acc = Some(match acc {
            None => back,
            Some(a) => a.f_add(&back).map_err(torch("self-ensemble: sum"))?,
        });
    }
    let mean = acc.ok_or_else(|| ExpertError::Baseline { which: "self-ensemble", what: "no outputs".into() })?;
    tensor_to_image(&mean.f_div_scalar(8.0).map_err(torch("self-ensemble: mean"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dihedral_inverse_undoes_forward() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (tch::Kind::Float, Device::Cpu)).reshape([2, 3, 4, 5]);
        for d in 0..8 {
            let back = inverse(&forward(&t, d).expect("fwd"), d).expect("inv");
            assert!(back.equal(&t), "d = {d}");
        }
    }

    #[test]
    fn blend_solves_an_exact_mixture_and_oracle_picks_per_pixel() {
        // hr = 0.25·a + 0.75·b exactly: the normal equations give those weights and no bias.
        let a: Vec<f64> = (0..50).map(|i| ((i * 7) % 13) as f64 / 13.0).collect();
        let b: Vec<f64> = (0..50).map(|i| ((i * 5) % 11) as f64 / 11.0).collect();
        let d = 3;
        let (mut ata, mut atb) = (vec![0f64; d * d], vec![0f64; d]);
        for p in 0..50 {
            let row = [a[p], b[p], 1.0];
            let hr = 0.25 * a[p] + 0.75 * b[p];
            for x in 0..d {
                atb[x] += row[x] * hr;
                for y in 0..d {
                    ata[x * d + y] += row[x] * row[y];
                }
            }
        }
        let w = solve(ata, atb, d).expect("solve");
        assert!((w[0] - 0.25).abs() < 1e-9 && (w[1] - 0.75).abs() < 1e-9 && w[2].abs() < 1e-9, "{w:?}");
        let x = RgbImage::from_pixel(2, 1, image::Rgb([10, 10, 10]));
        let mut y = RgbImage::from_pixel(2, 1, image::Rgb([200, 200, 200]));
        y.put_pixel(1, 0, image::Rgb([12, 12, 12]));
        let hr = RgbImage::from_pixel(2, 1, image::Rgb([190, 190, 190]));
        let o = oracle(&[&x, &y], &hr);
        assert_eq!(o.get_pixel(0, 0).0, [200, 200, 200]);
        assert_eq!(o.get_pixel(1, 0).0, [12, 12, 12]);
        assert_eq!(average(&[&x, &y]).get_pixel(0, 0).0, [105, 105, 105]);
    }
}
