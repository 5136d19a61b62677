//! Full-image validation during training, metrics.parquet and curves.png, on a real cache: the built-in
//! experts over patches of a real photo, validated on other real photos in benchmark layout (one folder with
//! LR_bicubic/X4, one without, where MATLAB bicubic makes the LR).
#![allow(clippy::field_reassign_with_default)] // a test config reads best as one setting per line

use arrow_array::{Array, Float64Array, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use srcache_cache::{Builtin, CacheConfig, ExpertConfig, InputConfig, NoProgress};
use srcache_formats::Dataset;
use srcache_trainer::config::{Head, TrainConfig};
use srcache_trainer::metrics::{plot, read_parquet, write_parquet, Row};
use srcache_trainer::model::FusionNet;
use srcache_trainer::train::train;
use srcache_trainer::validate::{FullImageVal, ValReport};
use std::path::{Path, PathBuf};

fn photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ingest/assets/photos")
}

fn copy_photo(name: &str, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(photos().join(name), dir.join(name)).expect("copy photo");
}

/// A cache of the three built-in experts (sr + features) over 32×32 LR patches of astronaut.png, and two
/// validation folders: ValLR (coffee, with a DIV2K-named LR file) and ValHR (chelsea + rocket, HR only).
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let train_dir = root.join("train");
    copy_photo("astronaut.png", &train_dir);
    let cfg = CacheConfig {
        input: InputConfig { hr_dir: train_dir, scale: 4, patch: 32, stride: Some(32), ..Default::default() },
        experts: Builtin::ALL.iter().map(|b| ExpertConfig::builtin(b.as_str(), *b)).collect(),
        out: root.join("cache"),
        devices: "cpu".into(),
        batch: 16,
        target_shard_bytes: 4 << 20,
        ..Default::default()
    };
    srcache_cache::run(&cfg, &NoProgress).expect("cache");
    let with_lr = root.join("ValLR");
    copy_photo("coffee.png", &with_lr.join("HR"));
    let hr = image::open(photos().join("coffee.png")).expect("photo").to_rgb8();
    let (_, lr) = srcache_ingest::resize::bicubic_lr(&hr, 4);
    std::fs::create_dir_all(with_lr.join("LR_bicubic/X4")).expect("mkdir");
    lr.save(with_lr.join("LR_bicubic/X4/coffeex4.png")).expect("save lr");
    let hr_only = root.join("ValHR");
    copy_photo("chelsea.png", &hr_only.join("HR"));
    copy_photo("rocket.png", &hr_only.join("HR"));
    (cfg.out, with_lr, hr_only)
}

fn cfg(val_dirs: Vec<PathBuf>) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.device = "cpu".into();
    c.threads = Some(2);
    c.model.head = Head::Delta;
    c.model.delta_expert = 1.into(); // experts in name order: bicubic, lanczos3, sharp_bicubic
    c.model.width = 8;
    c.model.blocks = 1;
    c.model.feat_proj = 2;
    c.loader.batch_size = 4;
    c.loader.crop = Some(16);
    c.optim.lr = 1e-3;
    c.optim.warmup_steps = 1;
    c.optim.ema_decay = 0.5;
    c.steps = 4;
    c.val_every = 2;
    c.ckpt_every = 2;
    c.log_every = 1;
    c.keep_best = 1;
    c.val_fraction = 0.0; // one source photo: validation comes from val_dirs alone
    c.val_dirs = val_dirs;
    c.val_max_images = 1;
    c.val_tile = 48;
    c.val_tile_overlap = 8;
    c.export = false;
    c
}

const METHODS: [&str; 5] = ["fused", "bicubic", "lanczos3", "sharp_bicubic", "matlab_bicubic"];

#[test]
fn training_validates_on_full_images_and_logs_parquet_and_curves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, with_lr, hr_only) = setup(tmp.path());
    let run = tmp.path().join("run");
    let c = cfg(vec![with_lr.clone(), hr_only.clone()]);
    let s = train(&c, &data, &run, false, &mut |_| {}).expect("train");
    assert!(s.val.is_none(), "no held-out samples with val_fraction 0");

    // A table per folder: fused, every expert, MATLAB bicubic; finite numbers; val_max_images respected.
    assert_eq!(s.val_full.len(), 2);
    for (t, src) in s.val_full.iter().zip(["ValLR", "ValHR"]) {
        assert_eq!(t.source, src);
        assert_eq!(t.samples, 1, "{src}: val_max_images = 1");
        let names: Vec<&str> = t.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, METHODS);
        for r in &t.rows {
            assert!(r.psnr.is_finite() && r.psnr > 15.0 && r.psnr < 50.0, "{src} {}: PSNR {}", r.name, r.psnr);
            assert!(r.ssim > 0.3 && r.ssim <= 1.0, "{src} {}: SSIM {}", r.name, r.ssim);
        }
        // The analytic experts are close to, but not the same as, the papers' bicubic baseline.
        let (mb, tb) = (t.row("matlab_bicubic").expect("row").psnr, t.row("bicubic").expect("row").psnr);
        assert!((mb - tb).abs() < 1.0 && mb != tb, "{src}: matlab {mb} vs torch bicubic {tb}");
    }
    let report: ValReport = serde_json::from_slice(&std::fs::read(run.join("val.json")).expect("val.json")).expect("json");
    assert_eq!(report.step, 4);
    assert_eq!(report.full.len(), 2);
    let log = std::fs::read_to_string(run.join("val.log")).expect("val.log");
    assert_eq!(log.matches("validation at step").count(), 2, "{log}");

    // Best-k selection ran on the full-image fused PSNR (the mean over the two folders).
    let mean_fused = (s.val_full[0].fused().psnr + s.val_full[1].fused().psnr) / 2.0;
    let latest = srcache_trainer::checkpoint::latest(&run).expect("ckpt").expect("a checkpoint");
    let st = srcache_trainer::checkpoint::read_state(&latest).expect("state");
    assert_eq!(st.val_psnr, Some(mean_fused));
    assert_eq!(st.best.len(), 1);

    // metrics.parquet: every step, losses, lr, throughput, nullable validation columns.
    let file = std::fs::File::open(run.join("metrics.parquet")).expect("parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader").build().expect("build");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 4);
    let b = &batches[0];
    for col in
        ["step", "loss", "charbonnier", "l1", "lr", "grad_norm", "steps_per_s", "samples_per_s", "val_psnr", "val_ssim", "val_best_expert_psnr"]
    {
        assert!(b.column_by_name(col).is_some(), "no column {col}");
    }
    let f = |n: &str| b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<Float64Array>()).expect(n).clone();
    let steps = b.column_by_name("step").and_then(|c| c.as_any().downcast_ref::<UInt64Array>()).expect("step").clone();
    assert_eq!(steps.values().to_vec(), vec![1, 2, 3, 4]);
    let (loss, charb, l1, sps, val) = (f("loss"), f("charbonnier"), f("l1"), f("samples_per_s"), f("val_psnr"));
    assert!((0..4).all(|i| loss.value(i).is_finite() && loss.value(i) > 0.0 && sps.value(i) > 0.0));
    assert!((0..4).all(|i| (charb.value(i) - loss.value(i)).abs() < 1e-9), "charbonnier is the only active term");
    assert_eq!(l1.null_count(), 4, "inactive loss terms are null");
    assert_eq!((0..4).map(|i| val.is_valid(i)).collect::<Vec<_>>(), [false, true, false, true]);
    assert_eq!(val.value(3), mean_fused);
    let best = f("val_best_expert_psnr");
    let want_best = (1..4).map(|k| (s.val_full[0].rows[k].psnr + s.val_full[1].rows[k].psnr) / 2.0).fold(f64::MIN, f64::max);
    assert_eq!(best.value(3), want_best);

    let png = image::open(run.join("curves.png")).expect("curves.png");
    assert_eq!((png.width(), png.height()), (3 * 420, 300));

    // A resumed, longer run keeps one row per step in both metric files.
    let mut longer = c.clone();
    longer.steps = 6;
    let s2 = train(&longer, &data, &run, true, &mut |_| {}).expect("resume");
    assert_eq!(s2.steps, 6);
    let rows = read_parquet(&run.join("metrics.parquet")).expect("read back");
    assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 7, "{csv}");
}

#[test]
fn delta_head_at_step_zero_scores_exactly_its_expert_on_full_images() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, with_lr, hr_only) = setup(tmp.path());
    let ds = Dataset::open(&data).expect("open");
    let mut c = cfg(vec![with_lr, hr_only]);
    c.val_max_images = 0;
    c.model.experts = srcache_trainer::Loader::dataset_experts(&ds);
    c.model.feat_channels = vec![4, 4, 4];
    c.model.scale = 4;
    for delta in 0..3 {
        c.model.delta_expert = delta.into();
        let set = FullImageVal::prepare(&c, &c.model, &ds).expect("prepare");
        assert_eq!(set.images(), 3);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = FusionNet::new(&vs.root(), &c.model).expect("model");
        let tables = set.evaluate(&model).expect("evaluate");
        for t in &tables {
            let (fused, expert) = (t.fused(), &t.rows[1 + delta]);
            assert_eq!((fused.psnr, fused.ssim), (expert.psnr, expert.ssim), "{}: delta on {}", t.source, expert.name);
        }
    }
}

#[test]
fn metrics_parquet_round_trips_and_curves_render() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A realistic curve: loss falling over two decades, warm-up + cosine lr, a validation every 50 steps.
    let rows: Vec<Row> = (1..=400u64)
        .map(|s| {
            let t = s as f64;
            let noise = ((t * 12.9898).sin() * 43_758.545).fract().abs();
            let loss = 0.2 * (-t / 80.0).exp() + 0.002 * (1.0 + noise);
            let lr = if s < 20 { 1e-3 * t / 20.0 } else { 1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * (t - 20.0) / 380.0).cos()) };
            let val = (s % 50 == 0).then(|| 30.0 + 2.0 * (1.0 - (-t / 150.0).exp()));
            Row {
                step: s,
                loss,
                parts: vec![("charbonnier".into(), loss * 0.9), ("ssim".into(), loss * 0.1)],
                lr,
                grad_norm: 0.5,
                steps_per_s: 10.0,
                samples_per_s: 80.0,
                val_psnr: val,
                val_ssim: val.map(|_| 0.9),
                val_best_expert_psnr: val.map(|_| 31.2),
            }
        })
        .collect();
    let pq = tmp.path().join("metrics.parquet");
    write_parquet(&pq, &rows).expect("write");
    assert_eq!(read_parquet(&pq).expect("read"), rows);
    let png = tmp.path().join("curves.png");
    plot(&rows, &png).expect("plot");
    let img = image::open(&png).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (3 * 420, 300));
    // Something was drawn in each panel's plot area, not just the frame.
    for p in 0..3 {
        let coloured = (p * 420 + 70..p * 420 + 400).flat_map(|x| (60..250).map(move |y| (x, y))).filter(|&(x, y)| {
            let c = img.get_pixel(x, y).0;
            c.iter().max().unwrap_or(&0) - c.iter().min().unwrap_or(&0) > 60
        });
        assert!(coloured.count() > 100, "panel {p} has no coloured curve");
    }
    if let Ok(dir) = std::env::var("SRCACHE_KEEP_PLOT") {
        std::fs::copy(&png, Path::new(&dir).join("curves_synthetic.png")).expect("keep plot");
    }
}
