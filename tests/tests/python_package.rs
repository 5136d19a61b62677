//! The Python side of a cache: the installable `srcache` package (python/), its reader and PyTorch Dataset on a
//! real merged root made by the binary (checksums, shapes, flipped byte named), the same tensors out of the
//! Python Dataset and the Rust loader for the same sample and transform, and a 2-process torchrun DDP run
//! (gloo, CPU) whose ranks read disjoint samples that together cover the epoch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use half::f16;
use srcache_formats::{Codec, DType, Dataset, DatasetOptions, DatasetWriter, PatchBox, SampleMeta, Schema, TensorSpec};
use srcache_tests::{photos_dir, srcache_bin, venv_python, workspace};
use srcache_trainer::{Loader, LoaderConfig, LoaderPosition};

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A merged 2-part cache of the shipped photos with two built-in experts (sr + features).
fn merged_cache(root: &Path) -> PathBuf {
    let out = root.join("merged");
    let photos = photos_dir();
    for k in 0..2 {
        let part = format!("{k}/2");
        run_ok(
            Command::new(srcache_bin())
                .args(["cache", "--hr"])
                .arg(&photos)
                .args(["--scale", "2", "--patch", "24", "--stride", "48", "--quiet"])
                .args(["--expert", "bicubic=builtin:bicubic", "--expert", "lanczos=builtin:lanczos3", "--part", &part, "--out"])
                .arg(&out),
        );
    }
    run_ok(Command::new(srcache_bin()).arg("merge").arg(&out));
    out
}

/// A plain dataset whose feature map is at half the LR resolution (loader align 2), raw and zstd codecs mixed.
fn half_res_feature_dataset(dir: &Path) {
    let (lr, hr) = (16usize, 32usize);
    let mut schema = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, lr, lr], Codec::Raw),
        TensorSpec::new("hr", DType::U8, &[3, hr, hr], Codec::ZSTD),
        TensorSpec::new("sr/a", DType::F16, &[3, hr, hr], Codec::SHUFFLE_ZSTD),
        TensorSpec::new("sr/b", DType::F16, &[3, hr, hr], Codec::Raw),
        TensorSpec::new("feat/b", DType::F16, &[4, lr / 2, lr / 2], Codec::SHUFFLE_ZSTD),
    ]);
    schema.attrs.insert("scale".into(), "2".into());
    let (mut w, _) = DatasetWriter::create_or_resume(dir, schema, DatasetOptions { target_shard_bytes: 30_000 }).expect("writer");
    for i in 0..12u32 {
        let u8s = |n: usize, salt: u32| (0..n).map(|k| ((k as u32 * 37 + i * 11 + salt) % 251) as u8).collect::<Vec<u8>>();
        let f16s = |n: usize, salt: u32| {
            (0..n).flat_map(|k| f16::from_f32(((k as u32 * 13 + i * 7 + salt) % 97) as f32 / 97.0).to_le_bytes()).collect::<Vec<u8>>()
        };
        let meta = SampleMeta {
            id: format!("s{i}"),
            source: format!("img{}.png", i / 4),
            patch: PatchBox { x: 0, y: 0, w: 16, h: 16 },
            variant: "clean".into(),
            psnr: Default::default(),
        };
        w.write(&meta, &[&u8s(3 * lr * lr, 1), &u8s(3 * hr * hr, 2), &f16s(3 * hr * hr, 3), &f16s(3 * hr * hr, 4), &f16s(4 * 8 * 8, 5)])
            .expect("write");
    }
    w.finish().expect("finish");
}

/// Runs the Rust loader over `root` and writes what it delivered in check_loader_parity.py's dump format.
fn dump_loader(root: &Path, dump: &Path, crop: u32) -> usize {
    let ds = Arc::new(Dataset::open(root).expect("open"));
    let cfg = LoaderConfig { batch_size: 4, crop: Some(crop), workers: 1, seed: 7, ..Default::default() };
    let mut loader = Loader::new(ds.clone(), (0..ds.len()).collect(), &cfg, LoaderPosition::default()).expect("loader");
    let mut entries = Vec::new();
    for b in 0..4 {
        let batch = loader.next_batch().expect("batch");
        let mut named: Vec<(String, &tch::Tensor)> = vec![("lr".into(), &batch.lr), ("hr".into(), &batch.hr)];
        for (e, t) in loader.experts.iter().zip(&batch.sr) {
            named.push((format!("sr/{e}"), t));
        }
        let with_feat: Vec<&String> = loader.experts.iter().zip(&loader.feat_channels).filter(|(_, c)| **c > 0).map(|(e, _)| e).collect();
        for (e, t) in with_feat.into_iter().zip(&batch.feat) {
            named.push((format!("feat/{e}"), t));
        }
        for (k, (&index, aug)) in batch.indices.iter().zip(&batch.aug).enumerate() {
            let sub = format!("b{b}s{k}");
            std::fs::create_dir_all(dump.join(&sub)).expect("mkdir");
            let mut files = serde_json::Map::new();
            for (name, t) in &named {
                let item = t.get(k as i64).contiguous();
                let n = item.numel() * item.kind().elt_size_in_bytes();
                let mut bytes = vec![0u8; n];
                item.copy_data_u8(&mut bytes, item.numel());
                let rel = format!("{sub}/{}.bin", name.replace('/', "_"));
                std::fs::write(dump.join(&rel), bytes).expect("write");
                files.insert(name.clone(), rel.into());
            }
            entries.push(serde_json::json!({"index": index, "y0": aug.y0, "x0": aug.x0, "crop": aug.crop, "d": aug.d, "files": files}));
        }
    }
    std::fs::write(dump.join("root"), root.to_string_lossy().as_bytes()).expect("root");
    std::fs::write(dump.join("aug.json"), serde_json::to_vec(&entries).expect("json")).expect("aug");
    entries.len()
}

#[test]
fn python_package_reads_a_merged_cache_like_the_rust_loader() {
    let tmp = tempfile::tempdir().expect("tmp");
    let py = venv_python();
    let tests = workspace().join("python/tests");
    // The package installs with pip (into a scratch target: the project venv keeps its editable install).
    let target = tmp.path().join("site");
    run_ok(Command::new(&py).args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"]).arg(&target).arg(workspace().join("python")));
    let imported =
        run_ok(Command::new(&py).args(["-c", "import srcache, sys; print(srcache.__file__)"]).env("PYTHONPATH", &target).current_dir(tmp.path()));
    assert!(imported.contains(&target.to_string_lossy().into_owned()), "{imported}");

    let root = merged_cache(tmp.path());
    let out = run_ok(Command::new(&py).arg(tests.join("check_dataset.py")).arg(&root));
    assert!(out.contains("ok"), "{out}");

    // Same sample + same transform -> the same bytes from Rust and Python, on the merged root and on a dataset
    // whose features are at half resolution (crops aligned to 2).
    let dump = tmp.path().join("dump");
    std::fs::create_dir_all(&dump).expect("mkdir");
    assert_eq!(dump_loader(&root, &dump, 16), 16);
    let out = run_ok(Command::new(&py).arg(tests.join("check_loader_parity.py")).arg(&dump));
    assert!(out.starts_with("ok 16 samples"), "{out}");
    let half = tmp.path().join("half");
    half_res_feature_dataset(&half);
    let dump2 = tmp.path().join("dump2");
    std::fs::create_dir_all(&dump2).expect("mkdir");
    dump_loader(&half, &dump2, 8);
    let out = run_ok(Command::new(&py).arg(tests.join("check_loader_parity.py")).arg(&dump2));
    assert!(out.starts_with("ok 16 samples"), "{out}");

    // Two ranks under torchrun read disjoint samples covering the epoch.
    let torchrun = workspace().join(".venv/bin/torchrun");
    let out = run_ok(
        Command::new(torchrun)
            .args(["--standalone", "--nproc_per_node", "2"])
            .arg(tests.join("ddp_train.py"))
            .arg(&root)
            .args(["--steps", "3"])
            .env("OMP_NUM_THREADS", "1"),
    );
    assert!(out.contains("ok ddp world 2") && out.contains("disjoint and covering"), "{out}");
}
