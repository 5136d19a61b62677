//! `srcache dump`: look at one cached sample, to see what the experts actually did.

use std::path::PathBuf;

use anyhow::{bail, Result};
use image::RgbImage;
use srcache_formats::Shard;

use crate::cmd_inspect::find_sample;
use srcache_trainer::plot::{self as render, Canvas};

/// Draw one sample as a contact-sheet PNG.
///
/// Layout (every tile is the HR patch size, enlarged by an integer zoom so tiles are >= 128 px):
///   row 1:         LR (nearest-neighbour upscaled, so its pixels stay visible) | HR
///   one row per expert: SR | error |SR-HR| as a heatmap | feature channel-mean | first 3 PCA components as RGB
/// Error heatmaps share one scale across experts (black = 0, pale yellow = the scale printed in the label),
/// so brighter means worse everywhere on the sheet. Feature tiles are blank for experts that cache no features.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset directory (shards + manifest.parquet).
    pub dir: PathBuf,
    /// Id of the sample to draw (see `srcache export DIR --manifest-csv ids.csv`).
    #[arg(long)]
    pub sample: String,
    /// Output PNG path.
    #[arg(long)]
    pub out: PathBuf,
}

const GAP: i64 = 4;
const LABEL: i64 = 18;
const MIN_TILE: u32 = 128;

pub fn run(args: Args) -> Result<()> {
    let (shard, i) = find_sample(&args.dir, &args.sample)?;
    let sheet = contact_sheet(&shard, i)?;
    srcache_ingest::write_png(&args.out, &sheet)?;
    println!("wrote {} ({}x{})", args.out.display(), sheet.width(), sheet.height());
    Ok(())
}

struct Chw {
    data: Vec<f32>,
    c: usize,
    h: usize,
    w: usize,
}

fn load(shard: &Shard, i: usize, name: &str, div: f32) -> Result<Chw> {
    let v = shard.tensor(i, name)?;
    let shape = v.spec().shape.clone();
    let [c, h, w] = shape[..] else { bail!("tensor {name:?} has shape {shape:?}, expected [C,H,W]") };
    let mut data = v.to_f32()?;
    if div != 1.0 {
        data.iter_mut().for_each(|x| *x /= div);
    }
    Ok(Chw { data, c, h, w })
}

fn contact_sheet(shard: &Shard, i: usize) -> Result<RgbImage> {
    let lr = load(shard, i, "lr", 255.0)?;
    let hr = load(shard, i, "hr", 255.0)?;
    let experts: Vec<String> = shard.schema().tensors.iter().filter_map(|t| t.name.strip_prefix("sr/").map(String::from)).collect();
    let meta = shard.meta(i)?.clone();
    let zoom = MIN_TILE.div_ceil(hr.w.min(hr.h).max(1) as u32).max(1);
    let (tw, th) = (hr.w as u32 * zoom, hr.h as u32 * zoom);
    let srs: Vec<Chw> = experts.iter().map(|e| load(shard, i, &format!("sr/{e}"), 1.0)).collect::<Result<_>>()?;
    // |SR-HR| averaged over RGB; the common scale is the 99th percentile over all experts (at least 1/255).
    let errs: Vec<Vec<f32>> = srs
        .iter()
        .map(|s| {
            (0..hr.h * hr.w)
                .map(|p| (0..3).map(|ch| (s.data[ch * hr.h * hr.w + p] - hr.data[ch * hr.h * hr.w + p]).abs()).sum::<f32>() / 3.0)
                .collect()
        })
        .collect();
    let mut pool: Vec<f32> = errs.iter().flatten().copied().collect();
    let scale = render::quantile(&mut pool, 0.99).max(1.0 / 255.0);

    let cols = 4i64;
    let rows = 1 + experts.len() as i64;
    let (w, h) = (cols * tw as i64 + (cols + 1) * GAP, rows * (th as i64 + LABEL) + (rows + 1) * GAP);
    let mut c = Canvas::new(w as u32, h as u32, render::BACKGROUND);
    let put = |c: &mut Canvas, row: i64, col: i64, img: &RgbImage, label: &str| {
        let x = GAP + col * (tw as i64 + GAP);
        let y = GAP + row * (th as i64 + LABEL + GAP);
        // Long labels drop to the 1x font rather than spill into the next tile.
        let sc = if render::text_width(label, 2) <= tw as i64 { 2 } else { 1 };
        c.text(x + 1, y + 2 + (2 - sc) * 3, label, sc, render::WHITE);
        c.blit(&render::resize_nearest(img, tw, th), x, y + LABEL);
    };
    let rgb = |t: &Chw| render::chw_to_image(&t.data, t.c, t.h, t.w, render::unit_to_u8);
    put(&mut c, 0, 0, &rgb(&lr), &format!("LR {}x{}", lr.w, lr.h));
    put(&mut c, 0, 1, &rgb(&hr), &format!("HR {}x{}", hr.w, hr.h));
    for (k, e) in experts.iter().enumerate() {
        let row = 1 + k as i64;
        let psnr = meta.psnr.get(e).map(|p| format!(" {p:.2}DB")).unwrap_or_default();
        put(&mut c, row, 0, &rgb(&srs[k]), &format!("{e}{psnr}"));
        put(&mut c, row, 1, &render::heatmap(&errs[k], hr.h, hr.w, 0.0, scale), &format!("ERR 0-{scale:.3}"));
        let feat = format!("feat/{e}");
        if shard.schema().index_of(&feat).is_some() {
            let f = load(shard, i, &feat, 1.0)?;
            put(&mut c, row, 2, &channel_mean(&f), &format!("MEAN C={}", f.c));
            put(&mut c, row, 3, &pca_rgb(&f), "PCA 1-3");
        }
    }
    Ok(c.img)
}

fn channel_mean(f: &Chw) -> RgbImage {
    let plane = f.h * f.w;
    let m: Vec<f32> = (0..plane).map(|p| (0..f.c).map(|ch| f.data[ch * plane + p]).sum::<f32>() / f.c.max(1) as f32).collect();
    let mut s = m.clone();
    let (lo, hi) = (render::quantile(&mut s, 0.01), render::quantile(&mut s, 0.99));
    render::heatmap(&m, f.h, f.w, lo, hi)
}

/// Projects every pixel's C-vector on the top 3 principal components (power iteration with deflation on
/// the CxC covariance) and shows them as R, G, B, each stretched over its 1st..99th percentile.
fn pca_rgb(f: &Chw) -> RgbImage {
    let (c, plane) = (f.c, f.h * f.w);
    let mean: Vec<f64> = (0..c).map(|ch| f.data[ch * plane..(ch + 1) * plane].iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64).collect();
    let mut cov = vec![0f64; c * c];
    for p in 0..plane {
        for a in 0..c {
            let da = f.data[a * plane + p] as f64 - mean[a];
            for b in a..c {
                cov[a * c + b] += da * (f.data[b * plane + p] as f64 - mean[b]);
            }
        }
    }
    for a in 0..c {
        for b in 0..a {
            cov[a * c + b] = cov[b * c + a];
        }
    }
    let mut comps: Vec<Vec<f32>> = Vec::new();
    for k in 0..3.min(c) {
        let mut v: Vec<f64> = (0..c).map(|j| 1.0 + ((j * 7 + k * 3) % 5) as f64).collect();
        let mut lambda = 0.0;
        for _ in 0..100 {
            let mut nv: Vec<f64> = (0..c).map(|a| (0..c).map(|b| cov[a * c + b] * v[b]).sum()).collect();
            lambda = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
            if lambda <= 1e-30 {
                break;
            }
            nv.iter_mut().for_each(|x| *x /= lambda);
            v = nv;
        }
        for a in 0..c {
            for b in 0..c {
                cov[a * c + b] -= lambda * v[a] * v[b];
            }
        }
        let proj: Vec<f32> = (0..plane).map(|p| (0..c).map(|a| (f.data[a * plane + p] as f64 - mean[a]) * v[a]).sum::<f64>() as f32).collect();
        let mut s = proj.clone();
        let (lo, hi) = (render::quantile(&mut s, 0.01), render::quantile(&mut s, 0.99));
        let span = (hi - lo).max(f32::EPSILON);
        comps.push(proj.iter().map(|x| (x - lo) / span).collect());
    }
    while comps.len() < 3 {
        comps.push(vec![0.0; plane]);
    }
    let data: Vec<f32> = comps.concat();
    render::chw_to_image(&data, 3, f.h, f.w, render::unit_to_u8)
}
