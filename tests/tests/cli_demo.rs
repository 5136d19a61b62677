//! End to end on the real binary: `demo` (ingest → cache → train → eval → report) with a short training,
//! then `verify`, `eval` and `infer` on what it produced.

use std::process::Command;

use srcache_tests::srcache_bin;

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(srcache_bin()).args(args).output().expect("run srcache");
    assert!(out.status.success(), "srcache {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn demo_then_verify_eval_and_infer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let o = out.to_str().expect("utf8 path");
    let demo = run(&["demo", "--out", o, "--steps", "20"]);
    let text = String::from_utf8_lossy(&demo.stdout);
    for method in ["matlab_bicubic", "bicubic", "lanczos3", "sharp_bicubic", "fused"] {
        assert!(text.contains(method), "demo table lacks {method}:\n{text}");
    }

    // The report folder: a JSON table with a row per method, the curve and one contact sheet per held-out image.
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report/table.json")).expect("table.json")).expect("json");
    let rows = table.as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    for r in rows {
        let p = r["psnr"].as_f64().unwrap_or(0.0);
        assert!(p > 20.0 && p < 45.0, "implausible PSNR in {r}");
    }
    for sheet in ["sheet_chelsea.png", "sheet_rocket.png", "curves.png"] {
        let img = image::open(out.join("report").join(sheet)).unwrap_or_else(|e| panic!("{sheet}: {e}"));
        assert!(img.width() > 100 && img.height() > 100);
    }

    // The cache the demo wrote is valid.
    run(&["verify", out.join("cache").to_str().expect("utf8")]);

    // eval with the trained fusion model reproduces the demo's table.
    let json = dir.path().join("eval.json");
    let bench = out.join("data/DemoVal");
    let cache = out.join("cache");
    let runs = out.join("run");
    run(&[
        "eval",
        bench.to_str().expect("utf8"),
        "--cache",
        cache.to_str().expect("utf8"),
        "--run",
        runs.to_str().expect("utf8"),
        "--json",
        json.to_str().expect("utf8"),
        "--tile",
        "128",
    ]);
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("eval.json")).expect("json");
    let fused =
        |v: &serde_json::Value| v.as_array().and_then(|a| a.iter().find(|r| r["method"] == "fused")).map(|r| r["psnr"].as_f64().unwrap_or(0.0));
    let (a, b) = (fused(&eval).expect("fused row"), fused(&table).expect("fused row"));
    // Same tiles as the demo; only float summation order may differ.
    assert!((a - b).abs() < 1e-3, "eval {a} vs demo {b}");

    // infer on the held-out LR images writes an SR image per method at 4x the LR size.
    let sr = dir.path().join("sr");
    let lr_dir = bench.join("LR_bicubic/X4");
    run(&[
        "infer",
        lr_dir.to_str().expect("utf8"),
        "--out",
        sr.to_str().expect("utf8"),
        "--cache",
        cache.to_str().expect("utf8"),
        "--run",
        runs.to_str().expect("utf8"),
        "--tile",
        "48",
    ]);
    let lr = image::open(lr_dir.join("chelseax4.png")).expect("lr");
    for m in ["bicubic", "lanczos3", "sharp_bicubic", "fused"] {
        let img = image::open(sr.join(format!("chelseax4_{m}.png"))).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!((img.width(), img.height()), (lr.width() * 4, lr.height() * 4));
    }

    // Bad input: a missing expert file is a clear error naming the file, before any work.
    let bad = Command::new(srcache_bin())
        .args(["infer", lr_dir.to_str().expect("utf8"), "--out", sr.to_str().expect("utf8"), "--expert", "x=/nonexistent/expert.pt"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/expert.pt"));
}

/// An installed or copied binary finds the demo's photos (they are built in), from any working directory.
#[test]
fn a_copied_binary_runs_the_demo_from_another_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin/srcache");
    std::fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir");
    std::fs::copy(srcache_bin(), &bin).expect("copy binary");
    let work = dir.path().join("elsewhere");
    std::fs::create_dir_all(&work).expect("mkdir");
    let out = Command::new(&bin).args(["demo", "--out", "d", "--steps", "2"]).current_dir(&work).output().expect("run copied binary");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(work.join("d/photos/chelsea.png").exists() && work.join("d/report/table.json").exists());
}
