//! PSNR/SSIM (BasicSR conventions) against an independent implementation: scikit-image on real photos.

use srcache_trainer::metrics::{psnr_y, ssim_y, Rgb8};
use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn psnr_and_ssim_match_scikit_image_on_real_photos() {
    let py = workspace().join(".venv/bin/python");
    assert!(py.exists(), "project venv missing: {}", py.display());
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cases = Vec::new();
    for name in ["chelsea", "coffee", "rocket"] {
        let img = image::open(workspace().join(format!("ingest/assets/photos/{name}.png"))).expect("photo").to_rgb8();
        let img = image::imageops::crop_imm(&img, 0, 0, 200.min(img.width()), 160.min(img.height())).to_image();
        // A realistic "SR output": down x4 then up x4 (the image crate's filters, independent of both sides).
        let (w, h) = img.dimensions();
        let lo = image::imageops::resize(&img, w / 4, h / 4, image::imageops::FilterType::Triangle);
        let sr = image::imageops::resize(&lo, w, h, image::imageops::FilterType::CatmullRom);
        let (a, b) = (tmp.path().join(format!("{name}_hr.png")), tmp.path().join(format!("{name}_sr.png")));
        img.save(&a).expect("save");
        sr.save(&b).expect("save");
        let ours_p = psnr_y(&Rgb8 { data: sr.as_raw(), w: w as usize, h: h as usize }, &Rgb8 { data: img.as_raw(), w: w as usize, h: h as usize }, 4);
        let ours_s = ssim_y(&Rgb8 { data: sr.as_raw(), w: w as usize, h: h as usize }, &Rgb8 { data: img.as_raw(), w: w as usize, h: h as usize }, 4);
        cases.push((a, b, ours_p, ours_s));
    }
    let script = r#"
import sys, numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
def y(p):
    a = np.asarray(Image.open(p).convert('RGB')).astype(np.float64) / 255.0
    return (a @ np.array([65.481, 128.553, 24.966]) + 16.0)[4:-4, 4:-4]
for i in range(1, len(sys.argv), 2):
    h, s = y(sys.argv[i]), y(sys.argv[i+1])
    p = peak_signal_noise_ratio(h, s, data_range=255)
    m = structural_similarity(h, s, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    print(p, m)
"#;
    let mut cmd = Command::new(&py);
    cmd.arg("-c").arg(script);
    for (a, b, _, _) in &cases {
        cmd.arg(a).arg(b);
    }
    let out = cmd.output().expect("run python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for ((_, _, p, s), line) in cases.iter().zip(text.lines()) {
        let v: Vec<f64> = line.split_whitespace().map(|x| x.parse().expect("num")).collect();
        assert!((p - v[0]).abs() < 1e-6, "PSNR {p} vs skimage {}", v[0]);
        // skimage filters with reflect padding then crops the same 5-pixel border BasicSR drops: same window set.
        assert!((s - v[1]).abs() < 1e-4, "SSIM {s} vs skimage {}", v[1]);
        assert!(*p > 15.0 && *p < 45.0 && *s > 0.3 && *s < 1.0, "implausible metrics {p} {s}");
    }
    assert_eq!(text.lines().count(), cases.len());
}
