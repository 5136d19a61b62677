//! The whole cache stage on the real test photos: an exported TorchScript expert and a built-in one on two
//! CPU workers, shards checked by `verify`; no-op rerun; config mismatch; SIGKILL mid-run then resume.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use srcache_cache::{run, Builtin, CacheConfig, CacheError, ExpertConfig, NoProgress};
use srcache_formats::{Codec, Dataset, Manifest, MANIFEST_FILE};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = workspace().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

fn base_config(out: &Path, limit: u64) -> CacheConfig {
    let mut cfg = CacheConfig::default();
    cfg.input.hr_dir = workspace().join("ingest/assets/photos");
    cfg.input.scale = 2;
    cfg.input.patch = 16;
    cfg.input.stride = Some(16);
    cfg.input.limit = Some(limit);
    cfg.out = out.to_path_buf();
    cfg.batch = 8;
    cfg.target_shard_bytes = 48 << 10;
    cfg
}

/// Every sample's meta and every tensor's decoded bytes, in order.
fn contents(dir: &Path) -> Vec<(String, Vec<Vec<u8>>)> {
    let ds = Dataset::open(dir).expect("open dataset");
    let names: Vec<String> = ds.schema().expect("schema").tensors.iter().map(|t| t.name.clone()).collect();
    (0..ds.len())
        .map(|g| {
            let (shard, i) = ds.sample(g).expect("sample");
            let meta = format!("{:?}", shard.meta(i).expect("meta"));
            (meta, names.iter().map(|n| shard.tensor(i, n).expect("tensor").decode().expect("decode")).collect())
        })
        .collect()
}

#[test]
fn cpu_run_with_exported_and_builtin_experts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let experts = tmp.path().join("experts");
    let st = Command::new(python()).arg(workspace().join("python/tests/make_tiny_experts.py")).arg(&experts).arg("rrdb").status().expect("python");
    assert!(st.success());
    let out = tmp.path().join("cache");
    let mut cfg = base_config(&out, 40);
    cfg.devices = "cpu:2".into();
    let mut bic = ExpertConfig::builtin("bicubic", Builtin::Bicubic);
    bic.feat_codec = Some(Codec::AffineU8);
    cfg.experts = vec![ExpertConfig::torchscript("rrdb", experts.join("rrdb.pt")), bic];
    let s = run(&cfg, &NoProgress).expect("run");
    assert_eq!((s.samples, s.written, s.resumed), (40, 40, 0));
    assert!(s.shards >= 2, "small target size must roll shards, got {}", s.shards);
    assert!(s.ratio() > 1.5, "f16 + zstd must beat raw f32, ratio {}", s.ratio());
    assert!(s.mean_psnr["bicubic"] > 20.0, "bicubic mean psnr {}", s.mean_psnr["bicubic"]);

    let ds = Dataset::open(&out).expect("open");
    assert_eq!(ds.len(), 40);
    for shard in ds.shards() {
        assert!(shard.verify().is_empty(), "{:?}", shard.verify());
    }
    let schema = ds.schema().expect("schema");
    let shape = |n: &str| schema.tensors[schema.index_of(n).expect(n)].shape.clone();
    assert_eq!(shape("lr"), vec![3, 16, 16]);
    assert_eq!(shape("hr"), vec![3, 32, 32]);
    assert_eq!(shape("sr/rrdb"), vec![3, 32, 32]);
    assert_eq!(shape("feat/rrdb"), vec![8, 16, 16]);
    assert_eq!(shape("feat/bicubic"), vec![4, 16, 16]);
    assert_eq!(schema.tensors[schema.index_of("feat/bicubic").expect("feat")].codec, Codec::AffineU8);
    let rows = Manifest::read(&out.join(MANIFEST_FILE)).expect("manifest");
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|r| r.psnr.contains_key("rrdb") && r.psnr.contains_key("bicubic")));
    // Stream order is preserved whatever the worker count.
    let ids: Vec<&str> = rows.iter().map(|r| r.sample_id.as_str()).collect();
    let mut sorted_by_stream = ids.clone();
    sorted_by_stream.dedup();
    assert_eq!(sorted_by_stream.len(), 40, "duplicate sample ids");

    // The Python reader (numpy + zstandard + pyarrow, no Rust) reads the same shards through the manifest.
    let code = "import sys, os; sys.path.insert(0, sys.argv[1]); from srcache import reader as r; \
                m = r.read_manifest(os.path.join(sys.argv[2], 'manifest.parquet')).to_pylist(); \
                assert len(m) == 40, len(m); row = m[3]; \
                s = r.Shard(os.path.join(sys.argv[2], row['shard'])).sample(row['index']); \
                assert s['sr/rrdb'].shape == (3, 32, 32), s['sr/rrdb'].shape; \
                assert s['lr'].shape == (3, 16, 16), s['lr'].shape; print('ok')";
    let o = Command::new(python()).args(["-c", code]).arg(workspace().join("python")).arg(&out).output().expect("python reader");
    assert!(o.status.success(), "python reader: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");

    // A finished run is a no-op; a different config in the same directory is refused.
    let again = run(&cfg, &NoProgress).expect("rerun");
    assert!(again.no_op && again.written == 0 && again.samples == 40);
    let mut other = cfg.clone();
    other.experts[1].builtin = Some(Builtin::Lanczos3);
    let err = run(&other, &NoProgress).expect_err("mismatch");
    assert!(matches!(err, CacheError::Refused { .. }) && err.to_string().contains("different config"), "{err}");
}

fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples/cache_run");
    assert!(bin.exists(), "{} not built (cargo test builds examples)", bin.display());
    bin
}

fn complete_shards(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".srs")).count()).unwrap_or(0)
}

#[test]
fn sigkill_mid_run_then_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let make = |name: &str| {
        let mut cfg = base_config(&tmp.path().join(name), 800);
        cfg.experts = vec![
            ExpertConfig::builtin("bicubic", Builtin::Bicubic),
            ExpertConfig::builtin("lanczos3", Builtin::Lanczos3),
            ExpertConfig::builtin("sharp", Builtin::SharpBicubic),
        ];
        cfg.devices = "cpu".into();
        cfg.compress_workers = 1;
        cfg.target_shard_bytes = 128 << 10;
        cfg
    };
    let reference = make("reference");
    run(&reference, &NoProgress).expect("uninterrupted run");

    let killed = make("killed");
    std::fs::create_dir_all(&killed.out).expect("mkdir");
    let toml_path = tmp.path().join("killed.toml");
    std::fs::write(&toml_path, killed.to_toml().expect("toml")).expect("write toml");
    let mut child = Command::new(example_bin()).arg(&toml_path).spawn().expect("spawn");
    let t0 = Instant::now();
    while complete_shards(&killed.out) < 3 {
        assert!(child.try_wait().expect("wait").is_none(), "run finished before it could be killed");
        assert!(t0.elapsed() < Duration::from_secs(120), "no shard after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("reap");
    assert!(!killed.out.join(MANIFEST_FILE).exists(), "killed run must not have finished");

    let o = Command::new(example_bin()).arg(&toml_path).output().expect("rerun");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(line.contains("samples 800") && !line.contains("resumed 0 "), "resume did not skip anything: {line}");

    let a = Manifest::read(&reference.out.join(MANIFEST_FILE)).expect("manifest a");
    let b = Manifest::read(&killed.out.join(MANIFEST_FILE)).expect("manifest b");
    assert_eq!(a.len(), 800);
    assert_eq!(a, b, "manifests differ");
    assert!(contents(&reference.out) == contents(&killed.out), "tensor contents differ");
}

/// Expert split (each expert pinned to its own worker) and data parallel over two workers write exactly
/// what one worker writes.
#[test]
fn placements_and_worker_counts_give_identical_shards() {
    let tmp = tempfile::tempdir().expect("tmp");
    let make = |name: &str| {
        let mut cfg = base_config(&tmp.path().join(name), 60);
        cfg.experts = vec![ExpertConfig::builtin("bicubic", Builtin::Bicubic), ExpertConfig::builtin("sharp", Builtin::SharpBicubic)];
        cfg
    };
    let one = make("one");
    run(&one, &NoProgress).expect("one worker");
    let mut dp = make("dp");
    dp.devices = "cpu:3".into();
    dp.compress_workers = 3;
    run(&dp, &NoProgress).expect("data parallel");
    let mut split = make("split");
    split.placement = srcache_cache::Placement::ExpertSplit;
    split.experts[0].device = Some("cpu".into());
    split.experts[1].device = Some("cpu:1".into());
    run(&split, &NoProgress).expect("expert split");
    let reference = contents(&one.out);
    assert_eq!(reference.len(), 60);
    assert!(contents(&dp.out) == reference, "data-parallel output differs");
    assert!(contents(&split.out) == reference, "expert-split output differs");
}

#[test]
fn config_round_trips_through_toml_and_bad_configs_are_refused() {
    let mut cfg = base_config(Path::new("/tmp/x"), 10);
    let mut e = ExpertConfig::torchscript("hat", "/models/hat.pt");
    e.feat_codec = Some(Codec::AffineU8);
    cfg.experts.push(e);
    let text = cfg.to_toml().expect("toml");
    let back: CacheConfig = toml::from_str(&text).expect("parse");
    assert_eq!(back, cfg);
    assert!(toml::from_str::<CacheConfig>("batchsize = 3").is_err(), "unknown keys must be rejected");

    let mut dup = cfg.clone();
    dup.experts.push(dup.experts[0].clone());
    assert!(dup.validate().expect_err("dup").to_string().contains("duplicate"));
    let mut both = cfg.clone();
    both.experts[0].path = Some("/x.pt".into());
    assert!(both.validate().is_err(), "builtin and path together");
    assert!(srcache_cache::parse_devices("cpu:2").expect("cpu:2").len() == 2);
    assert!(srcache_cache::parse_devices("gpu").is_err());
    if tch::Cuda::device_count() == 0 {
        assert!(srcache_cache::parse_devices("cuda:0").is_err(), "absent CUDA device must be refused");
    }
}

#[test]
fn example_config_parses_and_validates() {
    let cfg = CacheConfig::from_toml_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("run.example.toml")).expect("example config");
    cfg.validate().expect("valid");
    assert_eq!(cfg.experts.len(), 3);
    assert_eq!((cfg.experts[0].dtype, cfg.experts[0].codec), (srcache_formats::DType::U8, Codec::RESIDUAL_U8));
    assert_eq!(cfg.experts[0].feat_pca.as_ref().map(|p| p.energy), Some(0.999));
}

/// The three-stage device worker (upload, compute, download) writes exactly what each expert computes on its
/// own for the same batch: on the CPU the overlapped worker changes nothing but timing.
#[test]
fn device_worker_stores_exactly_the_experts_own_outputs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = base_config(&tmp.path().join("c"), 32);
    cfg.experts = vec![ExpertConfig::builtin("bicubic", Builtin::Bicubic), ExpertConfig::builtin("sharp", Builtin::SharpBicubic)];
    // f16 sr: the experts' outputs with nothing but the f16 cast (the default u8 sr is checked in formats).
    let lossless = srcache_cache::StoragePreset(vec![srcache_cache::StoragePart::Lossless]);
    cfg.experts.iter_mut().for_each(|e| lossless.apply(e));
    cfg.batch = 8;
    // Bare patches: the experts see exactly the stored lr (the halo is checked in tests/tests/fusion_halo.rs).
    cfg.input.halo = 0;
    let summary = run(&cfg, &NoProgress).expect("run");
    assert_eq!(summary.devices.len(), 1);
    let dt = &summary.devices[0];
    assert_eq!((dt.device.as_str(), dt.batches, dt.samples, dt.final_chunk), ("cpu", 4, 32, 8), "{dt:?}");
    assert!(dt.idle_s >= 0.0 && dt.idle_s <= dt.wall_s, "{dt:?}");
    let ds = Dataset::open(&cfg.out).expect("open");
    let _g = tch::no_grad_guard();
    for (name, which) in [("bicubic", Builtin::Bicubic), ("sharp", Builtin::SharpBicubic)] {
        let e = srcache_cache::Expert::load(name, &srcache_cache::ExpertSource::Builtin(which), 2, tch::Device::Cpu, 16).expect("load");
        for b in 0..4usize {
            // The batch's LR patches exactly as the pipeline fed them: u8 / 255.
            let mut lr = Vec::new();
            for g in b * 8..(b + 1) * 8 {
                let (s, i) = ds.sample(g).expect("sample");
                lr.extend(s.tensor(i, "lr").expect("lr").decode().expect("decode"));
            }
            let x = tch::Tensor::from_slice(&lr).reshape([8, 3, 16, 16]).to_kind(tch::Kind::Float) / 255.0;
            let (sr, _) = e.forward(&x).expect("forward");
            let sr = sr.to_kind(tch::Kind::Half).contiguous();
            let mut want = vec![0u8; sr.numel() * 2];
            sr.copy_data_u8(&mut want, sr.numel());
            let per = want.len() / 8;
            for k in 0..8 {
                let (s, i) = ds.sample(b * 8 + k).expect("sample");
                let got = s.tensor(i, &format!("sr/{name}")).expect("sr").decode().expect("decode");
                assert!(got == want[k * per..(k + 1) * per], "{name}: sample {} differs from the expert's own output", b * 8 + k);
            }
        }
    }
}
