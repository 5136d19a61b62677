//! The CUDA paths, in the normal suite: they run where a GPU is present and print "skipped: no CUDA device" on a
//! line of their own where none is (scripts/gpu-check.sh is the full, measured GPU check).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use srcache_cache::{run, Builtin, CacheConfig, ExpertConfig, NoProgress};
use srcache_formats::Dataset;
use srcache_tests::{photos_dir, srcache_bin};
use srcache_trainer::{Loader, LoaderConfig, LoaderPosition};
use tch::Device;

fn cuda() -> Option<Device> {
    if tch::Cuda::device_count() > 0 {
        Some(Device::Cuda(0))
    } else {
        // Straight to stderr, past the test harness's output capture: a skip must be visible in the log.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: no CUDA device");
        None
    }
}

fn config(out: &Path, devices: &str) -> CacheConfig {
    let mut cfg = CacheConfig::default();
    cfg.input.hr_dir = photos_dir();
    cfg.input.scale = 2;
    cfg.input.patch = 32;
    cfg.input.stride = Some(32);
    cfg.input.limit = Some(48);
    cfg.experts = vec![ExpertConfig::builtin("bicubic", Builtin::Bicubic), ExpertConfig::builtin("lanczos", Builtin::Lanczos3)];
    cfg.out = out.to_path_buf();
    cfg.devices = devices.into();
    cfg.batch = 8;
    cfg
}

#[test]
fn doctor_lists_the_gpu() {
    if cuda().is_none() {
        return;
    }
    let o = Command::new(srcache_bin()).args(["doctor", "--json"]).output().expect("doctor");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(j["cuda_devices"].as_array().is_some_and(|a| !a.is_empty()), "{j}");
    assert!(j["cudnn"].is_number() && j["cuda_build"].is_string(), "{j}");
}

#[test]
fn cache_on_cuda_matches_the_cpu_and_two_workers_match_one() {
    if cuda().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let cpu = config(&tmp.path().join("cpu"), "cpu");
    let gpu = config(&tmp.path().join("gpu"), "cuda:0");
    let two = config(&tmp.path().join("two"), "cuda:0,cuda:0");
    for c in [&cpu, &gpu, &two] {
        run(c, &NoProgress).expect("cache");
    }
    let (a, b, c) = (Dataset::open(&cpu.out).expect("a"), Dataset::open(&gpu.out).expect("b"), Dataset::open(&two.out).expect("c"));
    let d = srcache_formats::diff_datasets(&a, &b, 5, Some(2e-3)).expect("diff");
    assert!(d.is_empty(), "cuda vs cpu: {d:?}");
    let d = srcache_formats::diff_datasets(&b, &c, 5, None).expect("diff");
    assert!(d.is_empty(), "two workers on one GPU vs one worker: {d:?}");
}

#[test]
fn pinned_batches_reach_the_gpu_equal_and_a_train_step_runs_with_amp() {
    let Some(dev) = cuda() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = config(&tmp.path().join("c"), "cpu");
    run(&cfg, &NoProgress).expect("cache");
    let ds = Arc::new(Dataset::open(&cfg.out).expect("open"));
    let lc = LoaderConfig { batch_size: 4, crop: Some(16), workers: 1, pin_device: Some(dev), ..Default::default() };
    let mut l = Loader::new(ds.clone(), (0..ds.len()).collect(), &lc, LoaderPosition::default()).expect("loader");
    let b = l.next_batch().expect("batch");
    assert!(b.lr.is_pinned(dev), "loader workers must pin batches for CUDA");
    let on_gpu = b.to_device(dev).expect("to cuda");
    let on_cpu = b.to_device(Device::Cpu).expect("to cpu");
    let d = (on_gpu.hr.to_device(Device::Cpu) - &on_cpu.hr).abs().max().double_value(&[]);
    assert_eq!(d, 0.0, "u8 -> f32 on the device differs from the CPU");
    let run_dir = tmp.path().join("run");
    let mut tc = srcache_trainer::TrainConfig {
        device: "cuda:0".into(),
        steps: 4,
        amp: true,
        val_every: 0,
        ckpt_every: 4,
        export: false,
        ..Default::default()
    };
    tc.loader.batch_size = 4;
    tc.loader.crop = Some(16);
    tc.model.width = 8;
    tc.model.blocks = 1;
    let s = srcache_trainer::train(&tc, &cfg.out, &run_dir, false, &mut |_| {}).expect("train on cuda");
    assert!(s.final_loss.is_finite());
}
