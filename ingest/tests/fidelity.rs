//! Fidelity against implementations srcache did not write (python/tests/ref_ingest.py):
//! MATLAB bicubic LR vs the PyPI `resize-right` package, Y-PSNR/SSIM vs numpy + scikit-image,
//! on the real photographs in ingest/assets/photos.

use std::path::{Path, PathBuf};
use std::process::Command;

use srcache_ingest::{metrics, resize};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reference(args: &[&str]) -> serde_json::Value {
    let py = root().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh", py.display());
    let out = Command::new(&py)
        .arg(root().join("python/tests/ref_ingest.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad reference output: {e}"))
}

fn photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("ingest/assets/photos"))
        .expect("photos dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "expected the built-in photos");
    v
}

fn load(p: &Path) -> image::RgbImage {
    image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_rgb8()
}

#[test]
fn bicubic_lr_matches_resize_right_on_real_photos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut equal, mut total) = (0f64, 0f64);
    for photo in photos() {
        let hr = load(&photo);
        for scale in [2u32, 3, 4] {
            let (_, lr) = resize::bicubic_lr(&hr, scale);
            let lr_path = dir.path().join(format!("lr_x{scale}.png"));
            lr.save(&lr_path).expect("save lr");
            let r = reference(&["resize", photo.to_str().unwrap_or(""), lr_path.to_str().unwrap_or(""), &scale.to_string()]);
            assert_eq!(r["shape_ok"], true, "{} x{scale}: {r}", photo.display());
            let max = r["max_diff"].as_i64().unwrap_or(99);
            assert!(max <= 1, "{} x{scale}: max diff {max} > 1", photo.display());
            let px = r["pixels"].as_f64().unwrap_or(0.0);
            equal += r["equal_fraction"].as_f64().unwrap_or(0.0) * px;
            total += px;
        }
    }
    let frac = equal / total;
    eprintln!("identical uint8 values: {:.6}% of {total} ", frac * 100.0);
    assert!(frac >= 0.9999, "only {:.5}% identical", frac * 100.0);
}

#[test]
fn psnr_and_ssim_match_numpy_and_skimage() {
    let dir = tempfile::tempdir().expect("tempdir");
    for photo in photos().into_iter().take(3) {
        let hr = load(&photo);
        let scale = 4;
        let (hr, lr) = resize::bicubic_lr(&hr, scale);
        let up = resize::bicubic_up(&lr, scale);
        let (a, b) = (dir.path().join("hr.png"), dir.path().join("up.png"));
        hr.save(&a).expect("save");
        up.save(&b).expect("save");
        let r = reference(&["metrics", a.to_str().unwrap_or(""), b.to_str().unwrap_or(""), &scale.to_string()]);
        let (psnr, ssim) = (metrics::psnr_y(&hr, &up, scale), metrics::ssim_y(&hr, &up, scale));
        let (rp, rs) = (r["psnr"].as_f64().unwrap_or(0.0), r["ssim"].as_f64().unwrap_or(0.0));
        eprintln!("{}: psnr {psnr:.6} vs {rp:.6}, ssim {ssim:.8} vs {rs:.8}", photo.display());
        assert!((psnr - rp).abs() < 1e-6, "psnr {psnr} vs {rp}");
        assert!((ssim - rs).abs() < 1e-7, "ssim {ssim} vs {rs}");
        assert!(psnr > 15.0 && psnr < 45.0 && ssim > 0.3 && ssim < 1.0);
    }
}
