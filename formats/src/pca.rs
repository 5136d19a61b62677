//! Compact features: an expert's feature map [C, h', w'] stored as k < C PCA coefficient channels, with the
//! basis in the schema attrs (`feat/<expert>/pca`, JSON; FORMAT.md "Compact features (PCA)"). Being part of
//! the schema, the basis is part of the dataset's identity: resume, verify and merge, which compare schemas,
//! refuse shards written with another basis. Fitting is the producer's business (the cache crate); this is
//! the stored form and the two maps, `project` (features -> coefficients) and `reconstruct` (back).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{FormatError, Result};

/// Largest |⟨cᵢ, cⱼ⟩ − δᵢⱼ| accepted for the component rows: f32 bases from an eigen-decomposition are
/// orthonormal to ~1e-6; a transposed or unnormalised matrix is off by O(1).
const ORTHONORMAL_TOL: f64 = 1e-3;

/// A per-expert PCA basis: `k` orthonormal components over `channels` feature channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaBasis {
    /// C, the feature channels of the expert.
    pub channels: usize,
    /// k, the coefficient channels stored (1 ≤ k ≤ C).
    pub k: usize,
    /// Per-channel mean subtracted before projecting, [C].
    pub mean: Vec<f32>,
    /// The components, k rows of C, row-major ([k·C]), orthonormal rows, in order of decreasing variance.
    pub components: Vec<f32>,
    /// Fraction of the total variance each kept component explains, [k] (each in [0, 1], sum ≤ 1).
    pub explained_variance_ratio: Vec<f32>,
    /// How it was fitted (free form: e.g. "samples", "pixels", "seed", "energy"), for provenance.
    #[serde(default)]
    pub fit: BTreeMap<String, String>,
}

fn bad(what: String) -> FormatError {
    FormatError::InvalidInput { what: format!("PCA basis: {what}") }
}

impl PcaBasis {
    /// A validated basis (see [`PcaBasis::validate`]); `channels` and `k` are taken from the sizes of `mean`
    /// and `explained_variance_ratio`.
    pub fn new(mean: Vec<f32>, components: Vec<f32>, explained_variance_ratio: Vec<f32>, fit: BTreeMap<String, String>) -> Result<Self> {
        let b = PcaBasis { channels: mean.len(), k: explained_variance_ratio.len(), mean, components, explained_variance_ratio, fit };
        b.validate()?;
        Ok(b)
    }

    /// Sizes consistent (1 ≤ k ≤ C, mean [C], components [k·C], ratios [k]), every value finite, ratios in
    /// [0, 1] summing to at most 1, component rows orthonormal (to 1e-3).
    pub fn validate(&self) -> Result<()> {
        let (c, k) = (self.channels, self.k);
        if c == 0 || k == 0 || k > c {
            return Err(bad(format!("needs 1 <= k <= channels, got k = {k}, channels = {c}")));
        }
        if self.mean.len() != c {
            return Err(bad(format!("mean has {} values, channels = {c}", self.mean.len())));
        }
        if Some(self.components.len()) != k.checked_mul(c) {
            return Err(bad(format!("components has {} values, k x channels = {k} x {c}", self.components.len())));
        }
        if self.explained_variance_ratio.len() != k {
            return Err(bad(format!("explained_variance_ratio has {} values, k = {k}", self.explained_variance_ratio.len())));
        }
        for (what, v) in [("mean", &self.mean), ("components", &self.components), ("explained_variance_ratio", &self.explained_variance_ratio)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("{what}[{i}] = {} is not finite", v[i])));
            }
        }
        if let Some(i) = self.explained_variance_ratio.iter().position(|&r| !(0.0..=1.0).contains(&r)) {
            return Err(bad(format!("explained_variance_ratio[{i}] = {} is outside [0, 1]", self.explained_variance_ratio[i])));
        }
        let total: f64 = self.explained_variance_ratio.iter().map(|&r| r as f64).sum();
        if total > 1.0 + 1e-4 {
            return Err(bad(format!("explained_variance_ratio sums to {total} > 1")));
        }
        for i in 0..k {
            for j in 0..=i {
                let dot: f64 = self.row(i).iter().zip(self.row(j)).map(|(&a, &b)| a as f64 * b as f64).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                if (dot - want).abs() > ORTHONORMAL_TOL {
                    return Err(bad(format!("component rows are not orthonormal: <c{i}, c{j}> = {dot:.6}, expected {want}")));
                }
            }
        }
        Ok(())
    }

    fn row(&self, j: usize) -> &[f32] {
        &self.components[j * self.channels..(j + 1) * self.channels]
    }

    /// Total fraction of the variance the k components keep.
    pub fn explained_variance(&self) -> f32 {
        self.explained_variance_ratio.iter().sum()
    }

    /// The JSON stored in the schema attr (deterministic: fields in declaration order, `fit` sorted; f32
    /// values as the shortest decimal that reads back to the same f32).
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and a string map always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and validates the attr JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        let b: PcaBasis = serde_json::from_str(s).map_err(|e| bad(format!("bad JSON: {e}")))?;
        b.validate()?;
        Ok(b)
    }

    fn check_len(&self, what: &str, got: usize, per_pixel: usize, h: usize, w: usize) -> Result<usize> {
        let hw = h.checked_mul(w).ok_or_else(|| bad(format!("{h} x {w} overflows")))?;
        if Some(got) != hw.checked_mul(per_pixel) {
            return Err(bad(format!("{what} has {got} values, expected {per_pixel} x {h} x {w}")));
        }
        Ok(hw)
    }

    /// Coefficients [k, h, w] of a feature map [C, h, w] (CHW f32): `components · (x − mean)` per pixel.
    /// Errors on a size mismatch or a non-finite feature value.
    pub fn project(&self, feat_chw: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let hw = self.check_len("feature map", feat_chw.len(), self.channels, h, w)?;
        if let Some(i) = feat_chw.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("feature value {} at channel {}, pixel {} is not finite", feat_chw[i], i / hw.max(1), i % hw.max(1))));
        }
        let mut out = vec![0f32; self.k * hw];
        for (j, o) in out.chunks_exact_mut(hw.max(1)).enumerate().take(self.k) {
            for (c, (&a, &m)) in self.row(j).iter().zip(&self.mean).enumerate() {
                for (o, &x) in o.iter_mut().zip(&feat_chw[c * hw..(c + 1) * hw]) {
                    *o += a * (x - m);
                }
            }
        }
        Ok(out)
    }

    /// Feature map [C, h, w] from coefficients [k, h, w]: `componentsᵀ · c + mean` per pixel. Exact inverse
    /// of [`PcaBasis::project`] when k = C (up to rounding); otherwise the best rank-k approximation.
    pub fn reconstruct(&self, coeffs: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let hw = self.check_len("coefficients", coeffs.len(), self.k, h, w)?;
        let mut out = vec![0f32; self.channels * hw];
        for (c, o) in out.chunks_exact_mut(hw.max(1)).enumerate().take(self.channels) {
            o.fill(self.mean[c]);
            for j in 0..self.k {
                let a = self.components[j * self.channels + c];
                for (o, &x) in o.iter_mut().zip(&coeffs[j * hw..(j + 1) * hw]) {
                    *o += a * x;
                }
            }
        }
        Ok(out)
    }
}

/// Fits the top `k` principal components of one feature map [C, h, w] (CHW f32) by power iteration on
/// the C×C covariance (f64), each component re-orthogonalised against the ones before it, so the rows come
/// out orthonormal even where eigenvalues are close. Dependency-free (no torch): meant for looking at one
/// sample (`srcache dump`'s "PCA 1-3" tile); the cache's own fit over a dataset is `srcache_cache::pca`.
/// `k` is clamped to `1..=C`; a constant map gets an arbitrary orthonormal basis with zero explained ratios.
pub fn fit_power_iteration(feat_chw: &[f32], channels: usize, h: usize, w: usize, k: usize) -> Result<PcaBasis> {
    let c = channels;
    let plane = h.checked_mul(w).ok_or_else(|| bad(format!("{h} x {w} overflows")))?;
    if c == 0 || plane == 0 || Some(feat_chw.len()) != c.checked_mul(plane) {
        return Err(bad(format!("feature map has {} values, expected {c} x {h} x {w} (all non-zero)", feat_chw.len())));
    }
    if let Some(i) = feat_chw.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("feature value {} at channel {}, pixel {} is not finite", feat_chw[i], i / plane, i % plane)));
    }
    let k = k.clamp(1, c);
    let ch = |a: usize| &feat_chw[a * plane..(a + 1) * plane];
    let mean: Vec<f64> = (0..c).map(|a| ch(a).iter().map(|&v| v as f64).sum::<f64>() / plane as f64).collect();
    let mut cov = vec![0f64; c * c];
    for a in 0..c {
        for b in a..c {
            let s: f64 = ch(a).iter().zip(ch(b)).map(|(&x, &y)| (x as f64 - mean[a]) * (y as f64 - mean[b])).sum();
            cov[a * c + b] = s / plane as f64;
            cov[b * c + a] = s / plane as f64;
        }
    }
    let trace: f64 = (0..c).map(|a| cov[a * c + a]).sum();
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(k);
    let mut ratios = Vec::with_capacity(k);
    let orthonormalise = |v: &mut Vec<f64>, rows: &[Vec<f64>]| -> f64 {
        for r in rows {
            let d: f64 = v.iter().zip(r).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(r).for_each(|(a, b)| *a -= d * b);
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-150 {
            v.iter_mut().for_each(|x| *x /= n);
        }
        n
    };
    for j in 0..k {
        // A deterministic start that is not orthogonal to typical leading components.
        let mut v: Vec<f64> = (0..c).map(|a| 1.0 + ((a * 7 + j * 3) % 5) as f64).collect();
        if orthonormalise(&mut v, &rows) <= 1e-150 {
            // The start lay in the span found so far: take the first unit vector that does not.
            for a in 0..c {
                v = (0..c).map(|b| if a == b { 1.0 } else { 0.0 }).collect();
                if orthonormalise(&mut v, &rows) > 1e-6 {
                    break;
                }
            }
        }
        let mut lambda = 0.0;
        for _ in 0..200 {
            let mut nv: Vec<f64> = (0..c).map(|a| (0..c).map(|b| cov[a * c + b] * v[b]).sum()).collect();
            lambda = orthonormalise(&mut nv, &rows);
            if lambda <= 1e-30 {
                lambda = 0.0;
                break;
            }
            v = nv;
        }
        ratios.push(if trace > 0.0 { (lambda / trace).clamp(0.0, 1.0) as f32 } else { 0.0 });
        rows.push(v);
    }
    // Rounding can push the sum of ratios a hair over 1; scale them back rather than fail validation.
    let total: f32 = ratios.iter().sum();
    if total > 1.0 {
        ratios.iter_mut().for_each(|r| *r /= total);
    }
    let fit = BTreeMap::from([("method".to_string(), "power_iteration".to_string()), ("pixels".to_string(), plane.to_string())]);
    PcaBasis::new(mean.iter().map(|&m| m as f32).collect(), rows.iter().flatten().map(|&x| x as f32).collect(), ratios, fit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A rotation of R^3 (orthonormal rows).
    fn basis(k: usize) -> PcaBasis {
        let (s, c) = (0.6f32, 0.8f32);
        let rows = [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        let comps: Vec<f32> = rows[..k].iter().flatten().copied().collect();
        let evr = [0.7, 0.2, 0.1][..k].to_vec();
        PcaBasis::new(vec![1.0, -2.0, 0.5], comps, evr, BTreeMap::from([("samples".into(), "10".into())])).unwrap()
    }

    #[test]
    fn full_rank_round_trips_and_json_is_exact() {
        let b = basis(3);
        let x: Vec<f32> = (0..3 * 2 * 5).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let c = b.project(&x, 2, 5).unwrap();
        let y = b.reconstruct(&c, 2, 5).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
        assert_eq!(PcaBasis::from_json(&b.to_json()).unwrap(), b);
        assert!((b.explained_variance() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn truncated_basis_projects_onto_its_rows() {
        let b = basis(1);
        let c = b.project(&[2.0, -1.0, 9.0], 1, 1).unwrap();
        assert!((c[0] - (0.8 * 1.0 + 0.6 * 1.0)).abs() < 1e-6);
        let y = b.reconstruct(&c, 1, 1).unwrap();
        assert!((y[2] - 0.5).abs() < 1e-6, "channel outside the span gets the mean");
    }

    #[test]
    fn power_iteration_finds_the_dominant_directions() {
        // Pixels spread mostly along (0.8, 0.6, 0), less along (-0.6, 0.8, 0), not at all along z.
        let (h, w) = (4, 8);
        let mut x = vec![0f32; 3 * h * w];
        for p in 0..h * w {
            let (a, b) = ((p as f32 * 0.7).sin() * 5.0, (p as f32 * 1.3).cos());
            x[p] = 0.8 * a - 0.6 * b + 1.0;
            x[h * w + p] = 0.6 * a + 0.8 * b - 2.0;
            x[2 * h * w + p] = 3.0;
        }
        let b = fit_power_iteration(&x, 3, h, w, 3).unwrap();
        assert!((b.components[0].abs() - 0.8).abs() < 1e-2 && (b.components[1].abs() - 0.6).abs() < 1e-2, "{:?}", b.components);
        assert!(b.explained_variance_ratio[0] > 0.9 && b.explained_variance_ratio[2] < 1e-6);
        assert!((b.mean[2] - 3.0).abs() < 1e-6);
        let c = b.project(&x, h, w).unwrap();
        assert!(c[2 * h * w..].iter().all(|v| v.abs() < 1e-4), "no variance left on the third component");
        assert!(fit_power_iteration(&[1.0; 2 * 3], 2, 1, 3, 5).unwrap().k == 2, "k clamps to C; constant maps fit");
        assert!(fit_power_iteration(&[0.0; 5], 2, 1, 3, 1).is_err());
    }

    #[test]
    fn bad_bases_and_inputs_are_clear_errors() {
        let good = basis(2);
        let mut b = good.clone();
        b.components[0] = 2.0;
        assert!(b.validate().unwrap_err().to_string().contains("orthonormal"));
        let mut b = good.clone();
        b.mean.pop();
        assert!(b.validate().unwrap_err().to_string().contains("mean has 2 values"));
        let mut b = good.clone();
        b.explained_variance_ratio[1] = f32::NAN;
        assert!(b.validate().unwrap_err().to_string().contains("not finite"));
        let mut b = good.clone();
        b.k = 4;
        assert!(b.validate().is_err());
        assert!(good.project(&[0.0; 5], 1, 2).unwrap_err().to_string().contains("expected 3 x 1 x 2"));
        assert!(good.project(&[0.0, f32::INFINITY, 0.0], 1, 1).unwrap_err().to_string().contains("channel 1"));
        assert!(good.reconstruct(&[0.0; 3], 1, 1).is_err());
        assert!(PcaBasis::from_json("{").is_err());
    }
}
