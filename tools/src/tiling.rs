//! Full-image inference in tiles with overlap blending, so experts and fusion run on images of any size with
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

/// Runs `f` (LR tile [1,C,h,w] → output [1,C',s·h,s·w]) over `lr` [1,C,H,W] tile by tile and blends the outputs
/// into [1,C',s·H,s·W] on the CPU.
pub fn run_tiled<F>(lr: &Tensor, scale: i64, tiling: Tiling, mut f: F) -> Result<Tensor, tch::TchError>
where
    F: FnMut(&Tensor) -> Result<Tensor, tch::TchError>,
{
    let (_, _, h, w) = lr.size4()?;
    let tile = tiling.tile.max(8);
    let overlap = tiling.overlap.clamp(0, tile / 2);
    let (ys, xs) = (starts(h, tile, overlap), starts(w, tile, overlap));
    let mut acc: Option<Tensor> = None;
    let weight = Tensor::f_zeros([1, 1, h * scale, w * scale], (Kind::Float, tch::Device::Cpu))?;
    for (iy, &y) in ys.iter().enumerate() {
        for (ix, &x) in xs.iter().enumerate() {
            let th = tile.min(h);
            let tw = tile.min(w);
            let input = lr.f_narrow(2, y, th)?.f_narrow(3, x, tw)?;
            let out = f(&input)?.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Float)?;
            let (_, c, oh, ow) = out.size4()?;
            if oh != th * scale || ow != tw * scale {
                return Err(tch::TchError::Shape(format!(
                    "tile output is {oh}x{ow}, expected {}x{} (scale {scale})",
                    th * scale,
                    tw * scale
                )));
            }
            let r = overlap * scale;
            let wy = ramp(oh, r, iy > 0, iy + 1 < ys.len());
            let wx = ramp(ow, r, ix > 0, ix + 1 < xs.len());
            let wy = Tensor::from_slice(&wy).view([1, 1, oh, 1]);
            let wx = Tensor::from_slice(&wx).view([1, 1, 1, ow]);
            let wt = wy * wx;
            let acc = match &mut acc {
                Some(a) => a,
                None => acc.insert(Tensor::f_zeros([1, c, h * scale, w * scale], (Kind::Float, tch::Device::Cpu))?),
            };
            let (oy, ox) = (y * scale, x * scale);
            let mut dst = acc.f_narrow(2, oy, oh)?.f_narrow(3, ox, ow)?;
            let _ = dst.f_add_(&(&out * &wt))?;
            let mut wdst = weight.f_narrow(2, oy, oh)?.f_narrow(3, ox, ow)?;
            let _ = wdst.f_add_(&wt)?;
        }
    }
    let acc = acc.ok_or_else(|| tch::TchError::Shape("empty image".into()))?;
    acc.f_div(&weight)
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
}
