//! `srcache dump`: look at one cached sample, to see what the experts actually did.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use srcache_formats::{DType, Manifest, Shard, MANIFEST_FILE};

use crate::cmd_inspect::find_sample;
use srcache_trainer::plot::{self as render, Sheet, Tile};

/// Draw one sample as a contact sheet (PNG, plus an SVG twin beside it with the tiles embedded).
///
/// Layout (every tile is the HR patch size, enlarged by an integer zoom so tiles are >= 128 px):
///   row 1:         LR (nearest-neighbour upscaled, so its pixels stay visible) | HR
///   one row per expert: SR | error |SR-HR| as a heatmap | feature channel-mean | first 3 PCA components as RGB
/// Pictures are decoded by their stored dtype (u8 as value/255, f16/f32 as [0,1] floats) and shown exactly:
/// each SR tile is the stored output, pixel for pixel. Error heatmaps share one scale across experts
/// (black = 0, pale yellow = the scale printed in the label, in 8-bit levels), so brighter means worse
/// everywhere on the sheet. Feature tiles are blank for experts that cache no features.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset directory (shards + manifest.parquet).
    pub dir: PathBuf,
    /// Id of the sample to draw (see `srcache export DIR --manifest-csv ids.csv`).
    #[arg(long)]
    pub sample: Option<String>,
    /// Or the sample's 0-based row in manifest.parquet (the index the trainer and the Python reader use).
    #[arg(long, conflicts_with = "sample")]
    pub index: Option<usize>,
    /// Output PNG path (the SVG is written beside it, same name with .svg).
    #[arg(long)]
    pub out: PathBuf,
}

const MIN_TILE: u32 = 128;

pub fn run(args: Args) -> Result<()> {
    let id = match (&args.sample, args.index) {
        (Some(id), _) => id.clone(),
        (None, Some(n)) => {
            let path = args.dir.join(MANIFEST_FILE);
            let rows = Manifest::read(&path).with_context(|| format!("reading {}", path.display()))?;
            match rows.get(n) {
                Some(r) => r.sample_id.clone(),
                None => bail!("{}: --index {n} is out of range: the manifest has {} samples (0..{})", path.display(), rows.len(), rows.len()),
            }
        }
        (None, None) => bail!("give --sample ID or --index N"),
    };
    let (shard, i) = find_sample(&args.dir, &id)?;
    let sheet = contact_sheet(&shard, i)?;
    let img = render::save_sheet(&sheet, &args.out)?;
    println!("wrote {} and {} ({}x{}, sample {id})", args.out.display(), render::svg_path(&args.out).display(), img.width(), img.height());
    Ok(())
}

/// A decoded CHW tensor as f32 in the units pictures use: [0,1] for images.
pub struct Chw {
    pub data: Vec<f32>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Decodes tensor `name` of sample `i`. Pictures (`lr`, `hr`, `sr/*`) go to [0,1] by their stored dtype:
/// u8 (the default `residual_u8` sr, and lr/hr) as value/255, float dtypes as stored. Features stay as stored.
pub fn load(shard: &Shard, i: usize, name: &str, picture: bool) -> Result<Chw> {
    let v = shard.tensor(i, name)?;
    let spec = v.spec();
    let [c, h, w] = spec.shape[..] else { bail!("tensor {name:?} has shape {:?}, expected [C,H,W]", spec.shape) };
    let mut data = v.to_f32()?;
    if picture && spec.dtype == DType::U8 {
        data.iter_mut().for_each(|x| *x /= 255.0);
    }
    Ok(Chw { data, c, h, w })
}

fn contact_sheet(shard: &Shard, i: usize) -> Result<Sheet> {
    let lr = load(shard, i, "lr", true)?;
    let hr = load(shard, i, "hr", true)?;
    let experts: Vec<String> = shard.schema().tensors.iter().filter_map(|t| t.name.strip_prefix("sr/").map(String::from)).collect();
    let meta = shard.meta(i)?.clone();
    let zoom = MIN_TILE.div_ceil(hr.w.min(hr.h).max(1) as u32).max(1);
    let tile = (hr.w as u32 * zoom, hr.h as u32 * zoom);
    let srs: Vec<Chw> = experts.iter().map(|e| load(shard, i, &format!("sr/{e}"), true)).collect::<Result<_>>()?;
    for (e, s) in experts.iter().zip(&srs) {
        if (s.c, s.h, s.w) != (3, hr.h, hr.w) {
            bail!("sr/{e} is {}x{}x{}, HR is 3x{}x{}: cannot draw its error", s.c, s.h, s.w, hr.h, hr.w);
        }
    }
    // |SR-HR| averaged over RGB; the common scale is the 99th percentile over all experts (at least 1/255).
    let plane = hr.h * hr.w;
    let errs: Vec<Vec<f32>> = srs
        .iter()
        .map(|s| (0..plane).map(|p| (0..3).map(|ch| (s.data[ch * plane + p] - hr.data[ch * plane + p]).abs()).sum::<f32>() / 3.0).collect())
        .collect();
    let mut pool: Vec<f32> = errs.iter().flatten().copied().collect();
    let scale = render::quantile(&mut pool, 0.99).max(1.0 / 255.0);

    let cols = 4;
    let mut cells: Vec<Option<Tile>> = vec![None; cols * (1 + experts.len())];
    let rgb = |t: &Chw| render::chw_to_image(&t.data, t.c, t.h, t.w, render::unit_to_u8);
    let mut put = |row: usize, col: usize, img: RgbImage, label: String| {
        cells[row * cols + col] = Some(Tile { label, img: render::resize_nearest(&img, tile.0, tile.1) });
    };
    put(0, 0, rgb(&lr), format!("LR {}×{}", lr.w, lr.h));
    put(0, 1, rgb(&hr), format!("HR {}×{}", hr.w, hr.h));
    for (k, e) in experts.iter().enumerate() {
        let row = 1 + k;
        let psnr = meta.psnr.get(e).map(|p| format!(" {p:.2} dB")).unwrap_or_default();
        put(row, 0, rgb(&srs[k]), format!("{e}{psnr}"));
        put(row, 1, render::heatmap(&errs[k], hr.h, hr.w, 0.0, scale), format!("|SR−HR| 0–{:.1}/255", scale * 255.0));
        let feat = format!("feat/{e}");
        if shard.schema().index_of(&feat).is_some() {
            let f = load(shard, i, &feat, false)?;
            put(row, 2, channel_mean(&f), format!("Feature mean, C={}", f.c));
            put(row, 3, pca_rgb(&f)?, "Feature PCA 1–3".into());
        }
    }
    Ok(Sheet { cols, tile, cells })
}

fn channel_mean(f: &Chw) -> RgbImage {
    let plane = f.h * f.w;
    let m: Vec<f32> = (0..plane).map(|p| (0..f.c).map(|ch| f.data[ch * plane + p]).sum::<f32>() / f.c.max(1) as f32).collect();
    let mut s = m.clone();
    let (lo, hi) = (render::quantile(&mut s, 0.01), render::quantile(&mut s, 0.99));
    render::heatmap(&m, f.h, f.w, lo, hi)
}

/// Projects every pixel's C-vector on the top 3 principal components of this feature map
/// (`srcache_formats::pca::fit_power_iteration`) and shows them as R, G, B, each stretched over its
/// 1st..99th percentile.
fn pca_rgb(f: &Chw) -> Result<RgbImage> {
    let plane = f.h * f.w;
    let basis = srcache_formats::pca::fit_power_iteration(&f.data, f.c, f.h, f.w, 3)?;
    let coeffs = basis.project(&f.data, f.h, f.w)?;
    let mut data = vec![0f32; 3 * plane];
    for (k, comp) in coeffs.chunks_exact(plane.max(1)).enumerate().take(3) {
        let mut s = comp.to_vec();
        let (lo, hi) = (render::quantile(&mut s, 0.01), render::quantile(&mut s, 0.99));
        let span = (hi - lo).max(f32::EPSILON);
        for (o, x) in data[k * plane..(k + 1) * plane].iter_mut().zip(comp) {
            *o = (x - lo) / span;
        }
    }
    Ok(render::chw_to_image(&data, 3, f.h, f.w, render::unit_to_u8))
}
