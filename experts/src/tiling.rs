//! Full-image inference in tiles with overlap blending, so experts run on images of any size with
//! bounded memory. Each tile's output is weighted by a ramp that falls to near zero at tile edges that border
//! another tile, which hides the seams that padding-sensitive convolutions leave at tile borders.

use tch::{Kind, Tensor};

/// Tile geometry, in LR pixels.
#[derive(Debug, Clone, Copy)]
pub struct Tiling {
    pub tile: i64,
    pub overlap: i64,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { tile: 128, overlap: 16 }
    }
}

/// Start offsets of windows of `tile` covering `len` with at least `overlap` shared pixels; the last window is
/// flush with the end (BasicSR's rule), so every pixel is covered and no window sticks out.
pub fn starts(len: i64, tile: i64, overlap: i64) -> Vec<i64> {
    if len <= tile {
        return vec![0];
    }
    let stride = (tile - overlap).max(1);
    let mut v: Vec<i64> = (0..).map(|i| i * stride).take_while(|s| s + tile < len).collect();
    v.push(len - tile);
    v.dedup();
    v
}

/// 1-D blending ramp of length `n` (output pixels): 1 in the middle, rising linearly over `ramp` pixels at the
/// sides that touch a neighbour tile (`lo`/`hi`), never exactly 0 so a pixel covered once keeps its value.
fn ramp(n: i64, ramp: i64, lo: bool, hi: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut w = 1.0f32;
            if lo && i < ramp {
                w = w.min((i as f32 + 0.5) / ramp as f32);
            }
            if hi && n - 1 - i < ramp {
                w = w.min(((n - 1 - i) as f32 + 0.5) / ramp as f32);
            }
            w
        })
        .collect()
}

/// How one output of a tiled function relates to its LR tile: `out = in · num / den` on both axes
/// (sr: scale/1; LR-resolution features: 1/1; half-resolution features: 1/2).
#[derive(Debug, Clone, Copy)]
struct Ratio {
    num: i64,
    den: i64,
}

impl Ratio {
    fn of(out: i64, input: i64) -> Ratio {
        let g = gcd(out, input).max(1);
        Ratio { num: out / g, den: input / g }
    }
    /// `v · num / den` when that is a whole pixel.
    fn apply(self, v: i64) -> Option<i64> {
        (v * self.num % self.den == 0).then_some(v * self.num / self.den)
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// One output being assembled: its ratio to the LR input, the weighted sum and the weight sum.
struct Blend {
    ratio: Ratio,
    acc: Tensor,
    weight: Tensor,
}

/// Runs `f` (LR tile [1,C,h,w] → several outputs, output k [1,C_k,h·r_k,w·r_k]) over `lr` [1,C,H,W] tile by
/// tile and blends each output into [1,C_k,H·r_k,W·r_k] on the CPU. Each r_k is measured on the first tile
/// (sr at `scale`, features at LR resolution or a fraction of it); a ratio that puts a tile at a fractional
/// output offset is an error naming the tile geometry. One pass serves an expert's sr and features at once.
pub fn run_tiled_multi<E, F>(lr: &Tensor, tiling: Tiling, mut f: F) -> Result<Vec<Tensor>, E>
where
    E: From<tch::TchError>,
    F: FnMut(&Tensor) -> Result<Vec<Tensor>, E>,
{
    let (_, _, h, w) = lr.size4()?;
    let tile = tiling.tile.max(8);
    let overlap = tiling.overlap.clamp(0, tile / 2);
    let (ys, xs) = (starts(h, tile, overlap), starts(w, tile, overlap));
    let (th, tw) = (tile.min(h), tile.min(w));
    let mut outs: Vec<Blend> = Vec::new();
    let cpu = (Kind::Float, tch::Device::Cpu);
    for (iy, &y) in ys.iter().enumerate() {
        for (ix, &x) in xs.iter().enumerate() {
            let input = lr.f_narrow(2, y, th)?.f_narrow(3, x, tw)?;
            let results = f(&input)?;
            if !outs.is_empty() && results.len() != outs.len() {
                return Err(shape_err(format!("tile at ({x},{y}) gave {} outputs, the first tile {}", results.len(), outs.len())).into());
            }
            for (k, out) in results.into_iter().enumerate() {
                let out = out.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?;
                let (_, c, oh, ow) = out.size4()?;
                if outs.len() <= k {
                    let ratio = Ratio::of(oh, th);
                    let geometry = |what: &str| {
                        shape_err(format!("output {k} is {oh}x{ow} for a {th}x{tw} tile: {what} (image {h}x{w}, tile {tile}, overlap {overlap})"))
                    };
                    if Ratio::of(ow, tw).num * ratio.den != ratio.num * Ratio::of(ow, tw).den {
                        return Err(geometry("different ratios along the two axes").into());
                    }
                    let full = |v: i64| ratio.apply(v).ok_or_else(|| geometry("the image size does not scale to whole pixels"));
                    let (fh, fw) = (full(h)?, full(w)?);
                    if ys.iter().chain(&xs).any(|&s| ratio.apply(s).is_none()) {
                        return Err(geometry("a tile offset falls between output pixels; choose a tile and overlap divisible by the ratio").into());
                    }
                    outs.push(Blend { ratio, acc: Tensor::f_zeros([1, c, fh, fw], cpu)?, weight: Tensor::f_zeros([1, 1, fh, fw], cpu)? });
                }
                let b = &mut outs[k];
                let (eh, ew) = (b.ratio.apply(th), b.ratio.apply(tw));
                if (Some(oh), Some(ow)) != (eh, ew) {
                    return Err(shape_err(format!(
                        "tile output {k} is {oh}x{ow}, expected {}x{} (ratio {}/{})",
                        eh.unwrap_or(-1),
                        ew.unwrap_or(-1),
                        b.ratio.num,
                        b.ratio.den
                    ))
                    .into());
                }
                let r = b.ratio.apply(overlap).unwrap_or(overlap * b.ratio.num / b.ratio.den);
                let wy = ramp(oh, r, iy > 0, iy + 1 < ys.len());
                let wx = ramp(ow, r, ix > 0, ix + 1 < xs.len());
                let wt = Tensor::f_from_slice(&wy)?.f_view([1, 1, oh, 1])?.f_mul(&Tensor::f_from_slice(&wx)?.f_view([1, 1, 1, ow])?)?;
                let (oy, ox) = (b.ratio.apply(y).unwrap_or(0), b.ratio.apply(x).unwrap_or(0));
                let mut dst = b.acc.f_narrow(2, oy, oh)?.f_narrow(3, ox, ow)?;
                let _ = dst.f_add_(&out.f_mul(&wt)?)?;
                let mut wdst = b.weight.f_narrow(2, oy, oh)?.f_narrow(3, ox, ow)?;
                let _ = wdst.f_add_(&wt)?;
            }
        }
    }
    if outs.is_empty() {
        return Err(shape_err("the tiled function returned no outputs".into()).into());
    }
    outs.into_iter().map(|b| b.acc.f_div(&b.weight).map_err(E::from)).collect()
}

fn shape_err(why: String) -> tch::TchError {
    tch::TchError::Shape(why)
}

/// Runs `f` (LR tile [1,C,h,w] → output [1,C',s·h,s·w]) over `lr` [1,C,H,W] tile by tile and blends the outputs
/// into [1,C',s·H,s·W] on the CPU.
pub fn run_tiled<F>(lr: &Tensor, scale: i64, tiling: Tiling, mut f: F) -> Result<Tensor, tch::TchError>
where
    F: FnMut(&Tensor) -> Result<Tensor, tch::TchError>,
{
    let (_, _, h, w) = lr.size4()?;
    let (th, tw) = (tiling.tile.max(8).min(h), tiling.tile.max(8).min(w));
    let mut outs = run_tiled_multi(lr, tiling, |t: &Tensor| -> Result<Vec<Tensor>, tch::TchError> {
        let out = f(t)?;
        let (_, _, oh, ow) = out.size4()?;
        if oh != th * scale || ow != tw * scale {
            return Err(shape_err(format!("tile output is {oh}x{ow}, expected {}x{} (scale {scale})", th * scale, tw * scale)));
        }
        Ok(vec![out])
    })?;
    outs.pop().ok_or_else(|| shape_err("empty image".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_everything_and_stay_inside() {
        for len in [1, 7, 64, 65, 100, 129, 300] {
            let s = starts(len, 64, 16);
            let tile = 64.min(len);
            assert_eq!(s[0], 0);
            assert!(s.iter().all(|&x| x + tile <= len));
            assert_eq!(*s.last().unwrap_or(&0) + tile, len);
            assert!(s.windows(2).all(|p| p[1] - p[0] <= 64 - 16));
        }
    }

    #[test]
    fn tiled_equals_whole_for_a_pointwise_function() -> Result<(), tch::TchError> {
        // Nearest ×2 upscaling is local, so the tiled result must equal the whole-image one exactly-ish.
        let lr = Tensor::f_rand([1, 3, 70, 93], (Kind::Float, tch::Device::Cpu))?;
        let up = |t: &Tensor| t.f_upsample_nearest2d([t.size()[2] * 2, t.size()[3] * 2], None, None);
        let whole = up(&lr)?;
        let tiled = run_tiled(&lr, 2, Tiling { tile: 32, overlap: 8 }, up)?;
        let diff = f64::try_from((whole - tiled).abs().max())?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }

    #[test]
    fn multi_output_blends_each_output_at_its_own_ratio() -> Result<(), tch::TchError> {
        // sr at ×3, features at LR resolution and at half of it: all local, so tiled == whole.
        let lr = Tensor::f_rand([1, 3, 60, 84], (Kind::Float, tch::Device::Cpu))?;
        let f = |t: &Tensor| -> Result<Vec<Tensor>, tch::TchError> {
            let (h, w) = (t.size()[2], t.size()[3]);
            Ok(vec![
                t.f_upsample_nearest2d([h * 3, w * 3], None, None)?,
                t.f_mul_scalar(2.0)?,
                t.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)?,
            ])
        };
        let whole = f(&lr)?;
        let tiled = run_tiled_multi(&lr, Tiling { tile: 32, overlap: 8 }, f)?;
        assert_eq!(tiled.len(), 3);
        for (a, b) in whole.iter().zip(&tiled) {
            assert_eq!(a.size(), b.size());
            let diff = f64::try_from((a - b).abs().max())?;
            assert!(diff < 1e-5, "max diff {diff}");
        }
        // A half-resolution output with an odd tile offset cannot be placed: an error, not a panic.
        let odd = Tensor::f_rand([1, 3, 61, 40], (Kind::Float, tch::Device::Cpu))?;
        let half = |t: &Tensor| -> Result<Vec<Tensor>, tch::TchError> { Ok(vec![t.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)?]) };
        assert!(run_tiled_multi(&odd, Tiling { tile: 32, overlap: 8 }, half).is_err());
        Ok(())
    }
}
