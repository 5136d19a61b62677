//! `srcache demo`: the whole product on built-in data in a few minutes on a laptop-class CPU.
//! Real photographs (public domain / CC0, shipped in ingest/assets/photos) → MATLAB-bicubic LR → patches →
//! three built-in analytic experts cached to shards → fusion training → full-image evaluation on held-out
//! photos → a report folder with the table, contact sheets and the training curve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use srcache_cache::{Builtin, CacheConfig, ExpertConfig, InputConfig};
use srcache_experts::benchmark::{self, BenchmarkFolder, BenchmarkImage};
use srcache_experts::evaluate::{evaluate_folder, ImageResult, Row, FUSED, MATLAB_BICUBIC};
use srcache_experts::{FusionModule, SrStack, Tiling};
use srcache_formats::{Lock, Ownership};
use srcache_trainer::plot::{Sheet, Tile};
use srcache_trainer::TrainConfig;

use crate::cmd_eval::print_table;

/// Run ingest → cache → train → eval end to end on built-in photos with built-in experts (bicubic,
/// lanczos3, sharp_bicubic), and write a report (table, contact sheets, training curve).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder (created; reused runs are resumed or redone).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Folder of HR photos, which must include chelsea and rocket (held out for evaluation). Default: the five
    /// photos built into the binary.
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

fn step(n: u32, what: &str) {
    println!("\n==> [{n}/5] {what}");
}

fn cache_config(train: &Path, out: &Path, scale: u32) -> CacheConfig {
    CacheConfig {
        input: InputConfig { hr_dir: train.to_path_buf(), scale, patch: 32, stride: Some(16), ..Default::default() },
        experts: Builtin::ALL.iter().map(|b| ExpertConfig::builtin(b.as_str(), *b)).collect(),
        out: out.join("cache"),
        devices: "cpu".into(),
        batch: 16,
        target_shard_bytes: 16 << 20,
        ..Default::default()
    }
}

/// One contact sheet per held-out image (PNG + SVG): HR crop, bicubic, each expert, fused, with labels and PSNR.
fn contact_sheet(out: &ImageResult, hr: &RgbImage, scale: u32, path: &Path) -> Result<()> {
    let crop = 160u32.min(hr.width()).min(hr.height());
    let (cx, cy) = ((hr.width() - crop) / 2, (hr.height() - crop) / 2);
    let cut = |img: &RgbImage| image::imageops::crop_imm(img, cx, cy, crop, crop).to_image();
    let psnr = |img: &RgbImage| srcache_ingest::metrics::psnr_y(img, hr, scale);
    let mut tiles: Vec<Tile> = vec![
        Tile { label: "HR".into(), img: cut(hr) },
        Tile { label: format!("MATLAB bicubic {:.2} dB", psnr(&out.bicubic)), img: cut(&out.bicubic) },
    ];
    for (n, img) in &out.experts {
        tiles.push(Tile { label: format!("{n} {:.2} dB", psnr(img)), img: cut(img) });
    }
    if let Some(f) = &out.fused {
        tiles.push(Tile { label: format!("Fused {:.2} dB", psnr(f)), img: cut(f) });
    }
    let sheet = Sheet { cols: tiles.len(), tile: (crop, crop), cells: tiles.into_iter().map(Some).collect() };
    srcache_trainer::plot::save_sheet(&sheet, path)?;
    Ok(())
}

/// What the demo writes into its `--out`: a folder that is new, empty, or a previous demo's (it holds only
/// what the demo made). The stages inside lock their own folders (the cache its `cache.lock`, the run itself).
const DEMO: Ownership = Ownership {
    what: "demo",
    choose: "--out",
    files: &[],
    dirs: &["data", "cache", "run", "report", "photos"],
    dataset: false,
    parts: None,
    lock: Lock::None,
};

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let _out = DEMO.claim(&a.out)?;
    let photos = match &a.photos {
        Some(p) => p.clone(),
        None => srcache_ingest::photos::extract(&a.out.join("photos"))?,
    };
    let report = a.out.join("report");
    std::fs::create_dir_all(&report)?;

    step(1, "ingest: built-in photos → train set + held-out benchmark (MATLAB-bicubic LR)");
    let split = benchmark::hold_out_photos(&photos, &a.out, a.scale, &[], &HELD_OUT)?;
    println!("{split}");
    let (train, bench) = (split.train, split.bench);

    step(2, "cache: 3 built-in experts over every 32×32 LR patch → compressed shards");
    let cfg = cache_config(&train, &a.out, a.scale);
    let cache_dir = cfg.out.clone();
    if cache_dir.exists() && CacheConfig::from_toml_file(&cache_dir.join("cache.toml")).map(|c| c.content() != cfg.content()).unwrap_or(true) {
        // A previous demo's cache made with other settings: the demo owns this folder, so it starts it over.
        srcache_cache::remove_cache(&cache_dir)?;
    }
    let bar = crate::cmd_cache::Bar::new(false);
    let summary = srcache_cache::run(&cfg, &bar)?;
    crate::cmd_cache::print_summary(&summary);

    step(3, &format!("train: fusion network, {} steps on CPU", a.steps));
    let tcfg = TrainConfig::demo(a.steps, a.scale, &bench);
    let run_dir = a.out.join("run");
    if run_dir.exists() {
        srcache_trainer::train::remove_run(&run_dir)?;
    }
    let pb = indicatif::ProgressBar::new(tcfg.steps);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ts = srcache_trainer::train(&tcfg, &cache_dir, &run_dir, false, &mut |row| {
        pb.set_position(row.step);
        pb.set_message(format!("loss {:.5}", row.loss));
    })?;
    pb.finish_and_clear();
    println!("{} steps, final loss {:.5}, {} parameters, {:.1} samples/s", ts.steps, ts.final_loss, ts.params, ts.samples_per_s);

    step(4, "eval: full held-out images, Y-PSNR/SSIM with border crop = scale; contact sheets");
    // The three built-ins: the experts the cache ran (not read back from it: the demo's eval needs no patch size).
    let stack = SrStack::assemble(Vec::new(), None, Some(a.scale), tch::Device::Cpu, Tiling::default())?;
    let fusion = FusionModule::load(&run_dir, tch::Device::Cpu)?;
    let folder = BenchmarkFolder::scan(&bench, a.scale, 0)?;
    let mut sheets = Vec::new();
    let rows: Vec<Row> = evaluate_folder(
        &stack,
        Some(&fusion),
        &folder,
        &mut |img: &BenchmarkImage, out: &ImageResult| {
            let path = report.join(format!("sheet_{}.png", img.name));
            contact_sheet(out, &img.hr, a.scale, &path).map_err(|e| -> srcache_experts::evaluate::BoxError { e.into() })?;
            sheets.push(path);
            Ok(())
        },
        &mut |e| eprintln!("skipped: {}", srcache_formats::error_chain(e)),
    )?;
    print_table(&rows);
    let fused = rows.iter().find(|r| r.method == FUSED).map(|r| r.psnr).unwrap_or(f64::NAN);
    let best = rows.iter().filter(|r| r.method != FUSED && r.method != MATLAB_BICUBIC).max_by(|x, y| x.psnr.total_cmp(&y.psnr));
    if let Some(b) = best {
        println!("fused − best single ({}) = {:+.3} dB", b.method, fused - b.psnr);
    }

    step(5, "report");
    srcache_formats::write_atomic(&report.join("table.json"), &serde_json::to_vec_pretty(&rows)?)?;
    for name in ["curves.png", "curves.svg", "metrics.csv"] {
        let src = run_dir.join(name);
        if src.exists() {
            srcache_formats::write_atomic(&report.join(name), &std::fs::read(&src)?)?;
        }
    }
    println!("report: {} (table.json, curves.png, metrics.csv, {} contact sheets)", report.display(), sheets.len());
    println!("demo finished in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
