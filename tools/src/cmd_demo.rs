//! `srcache demo`: the whole product on built-in data in a few minutes on a laptop-class CPU.
//! Real photographs (public domain / CC0, shipped in tests/data/photos) → MATLAB-bicubic LR → patches →
//! three built-in analytic experts cached to shards → fusion training → full-image evaluation on held-out
//! photos → a report folder with the table, contact sheets and the training curve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use srcache_cache::{Builtin, CacheConfig, ExpertConfig, InputConfig};
use srcache_trainer::TrainConfig;

use crate::cmd_eval::{eval_dataset, print_table, Row};
use crate::render::Canvas;
use crate::srstack::{expert_list, SrStack};
use crate::tiling::Tiling;

/// Run ingest → cache → train → eval end to end on built-in photos with built-in experts (bicubic,
/// lanczos3, sharp_bicubic), and write a report (table, contact sheets, training curve).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder (created; reused runs are resumed or redone).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Folder of HR photos; the last two (by name order) are held out for evaluation.
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Fusion training steps.
    #[arg(long, default_value_t = 2400)]
    pub steps: u64,
    /// Upscaling factor.
    #[arg(long, default_value_t = 4)]
    pub scale: u32,
}

const HELD_OUT: [&str; 2] = ["chelsea", "rocket"];

fn default_photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/photos")
}

fn step(n: u32, what: &str) {
    println!("\n==> [{n}/5] {what}");
}

/// Copies the photos into train/ and bench/DemoVal/HR, then writes MATLAB-bicubic LR for the held-out set.
fn prepare_data(photos: &Path, out: &Path, scale: u32) -> Result<(PathBuf, PathBuf)> {
    let files = srcache_ingest::scan::list_images(photos).map_err(|e| anyhow::anyhow!("{e}"))?;
    let train = out.join("data/train_HR");
    let bench = out.join("data/DemoVal");
    std::fs::create_dir_all(&train)?;
    std::fs::create_dir_all(bench.join("HR"))?;
    let (mut n_train, mut n_val) = (0, 0);
    for f in &files {
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = f.file_name().context("file name")?;
        let dst = if HELD_OUT.contains(&stem.as_str()) {
            n_val += 1;
            bench.join("HR").join(name)
        } else {
            n_train += 1;
            train.join(name)
        };
        std::fs::copy(f, &dst).with_context(|| format!("copy {} → {}", f.display(), dst.display()))?;
    }
    if n_train == 0 || n_val == 0 {
        bail!("{}: need training photos and the held-out {HELD_OUT:?}", photos.display());
    }
    let lr_dir = bench.join(format!("LR_bicubic/X{scale}"));
    let (written, skipped) = srcache_ingest::write_lr_folder(&bench.join("HR"), scale, &lr_dir, true, &|| {})
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{n_train} training photos, {n_val} held out; wrote {written} LR images to {} ({} skipped)", lr_dir.display(), skipped.len());
    Ok((train, bench))
}

fn cache_config(train: &Path, out: &Path, scale: u32) -> CacheConfig {
    CacheConfig {
        input: InputConfig { hr_dir: train.to_path_buf(), scale, patch: 32, stride: 16, ..Default::default() },
        experts: Builtin::ALL.iter().map(|b| ExpertConfig::builtin(b.as_str(), *b)).collect(),
        out: out.join("cache"),
        devices: "cpu".into(),
        batch: 16,
        target_shard_bytes: 16 << 20,
        ..Default::default()
    }
}

fn train_config(steps: u64, scale: u32, bench: &Path) -> TrainConfig {
    // Six validations, so curves.png shows the fused PSNR climbing past the best expert (each costs ~1 s).
    let val_every = (steps / 6).max(1);
    let mut cfg = TrainConfig { steps, device: "cpu".into(), val_every, ckpt_every: steps.max(1), log_every: 10, ..Default::default() };
    // Validate on the held-out photos at full size too: that is the number the final table reports.
    cfg.val_dirs = vec![bench.to_path_buf()];
    // Same tiles as step 4's evaluation, so val.json and the final table agree.
    cfg.val_tile = Tiling::default().tile as u32;
    cfg.model.scale = scale;
    cfg.val_fraction = 0.15;
    cfg.optim.lr = 1e-3;
    cfg.optim.warmup_steps = steps / 20;
    cfg.optim.ema_decay = 0.99;
    cfg.loader.batch_size = 8;
    // Train on random 16×16 LR (64×64 HR) sub-crops of the cached 32×32 patches and a slimmer trunk than the
    // default: the fusion trunk runs at HR resolution, and this keeps the demo to a few minutes on 2 cores.
    cfg.loader.crop = Some(16);
    cfg.model.width = 24;
    cfg.model.blocks = 3;
    cfg
}

/// One contact sheet per held-out image: HR crop, bicubic, each expert, fused, with labels and PSNR.
fn contact_sheet(stack: &SrStack, lr: &RgbImage, hr: &RgbImage, path: &Path) -> Result<()> {
    let out = stack.run(lr)?;
    let crop = 160u32.min(hr.width()).min(hr.height());
    let (cx, cy) = ((hr.width() - crop) / 2, (hr.height() - crop) / 2);
    let cut = |img: &RgbImage| image::imageops::crop_imm(img, cx, cy, crop, crop).to_image();
    let mut tiles: Vec<(String, RgbImage)> = vec![("HR".into(), cut(hr)), (format!("MATLAB BICUBIC {:.2}DB", srcache_ingest::metrics::psnr_y(&out.bicubic, hr, stack.scale)), cut(&out.bicubic))];
    for (n, img) in &out.experts {
        tiles.push((format!("{} {:.2}DB", n.to_uppercase(), srcache_ingest::metrics::psnr_y(img, hr, stack.scale)), cut(img)));
    }
    if let Some(f) = &out.fused {
        tiles.push((format!("FUSED {:.2}DB", srcache_ingest::metrics::psnr_y(f, hr, stack.scale)), cut(f)));
    }
    let (pad, label) = (8i64, 14i64);
    let cols = tiles.len() as i64;
    let mut canvas = Canvas::new((cols * (crop as i64 + pad) + pad) as u32, (crop as i64 + label + 2 * pad) as u32, Rgb([24, 24, 28]));
    for (i, (name, img)) in tiles.iter().enumerate() {
        let x = pad + i as i64 * (crop as i64 + pad);
        canvas.text(x, pad, name, 1, Rgb([230, 230, 230]));
        canvas.blit(img, x, pad + label);
    }
    canvas.img.save(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let photos = a.photos.clone().unwrap_or_else(default_photos);
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let report = a.out.join("report");
    std::fs::create_dir_all(&report)?;

    step(1, "ingest: built-in photos → train set + held-out benchmark (MATLAB-bicubic LR)");
    let (train, bench) = prepare_data(&photos, &a.out, a.scale)?;

    step(2, "cache: 3 built-in experts over every 32×32 LR patch → compressed shards");
    let cfg = cache_config(&train, &a.out, a.scale);
    let cache_dir = cfg.out.clone();
    if cache_dir.exists() && CacheConfig::from_toml_file(&cache_dir.join("cache.toml")).map(|c| c.content() != cfg.content()).unwrap_or(true) {
        std::fs::remove_dir_all(&cache_dir)?; // a leftover from another configuration: start clean
    }
    let bar = crate::cmd_cache::Bar::new(false);
    let summary = srcache_cache::run(&cfg, &bar).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::cmd_cache::print_summary(&summary);

    step(3, &format!("train: fusion network, {} steps on CPU", a.steps));
    let tcfg = train_config(a.steps, a.scale, &bench);
    let run_dir = a.out.join("run");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let pb = indicatif::ProgressBar::new(tcfg.steps);
    pb.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {per_sec} eta {eta} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    let ts = srcache_trainer::train(&tcfg, &cache_dir, &run_dir, false, &mut |row| {
        pb.set_position(row.step);
        pb.set_message(format!("loss {:.5}", row.loss));
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    pb.finish_and_clear();
    println!("{} steps, final loss {:.5}, {} parameters, {:.1} samples/s", ts.steps, ts.final_loss, ts.params, ts.samples_per_s);

    step(4, "eval: full held-out images, Y-PSNR/SSIM with border crop = scale");
    let experts = expert_list(&[], Some(&cache_dir))?;
    let stack = SrStack::new(a.scale, &experts, Some(&run_dir), tch::Device::Cpu, Tiling::default())?;
    let rows: Vec<Row> = eval_dataset(&stack, &bench, &indicatif::ProgressBar::hidden())?;
    print_table(&rows);
    let fused = rows.iter().find(|r| r.method == "fused").map(|r| r.psnr).unwrap_or(f64::NAN);
    let best = rows.iter().filter(|r| r.method != "fused").max_by(|x, y| x.psnr.total_cmp(&y.psnr));
    if let Some(b) = best {
        println!("fused − best single ({}) = {:+.3} dB", b.method, fused - b.psnr);
    }

    step(5, "report");
    std::fs::write(report.join("table.json"), serde_json::to_string_pretty(&rows)?)?;
    for name in ["curves.png", "metrics.csv"] {
        let src = run_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, report.join(name))?;
        }
    }
    let report_scan = srcache_ingest::scan(&srcache_ingest::ScanConfig {
        hr_dir: bench.join("HR"),
        lr_dir: Some(bench.join(format!("LR_bicubic/X{}", a.scale))),
        scale: a.scale,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    for entry in &report_scan.images {
        let img = srcache_ingest::prepare_image(entry, a.scale).map_err(|e| anyhow::anyhow!("{e}"))?;
        contact_sheet(&stack, &img.lr, &img.hr, &report.join(format!("sheet_{}.png", entry.stem)))?;
    }
    println!("report: {} (table.json, curves.png, metrics.csv, sheet_*.png)", report.display());
    println!("demo finished in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
