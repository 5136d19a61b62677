//! Experts on real inputs: built-ins on a real photo, TorchScript files exported by export_expert.py from
//! tiny random-weight spandrel models of every supported architecture, and the load-time errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use srcache_experts::{Builtin, Expert, ExpertError, ExpertSource};
use tch::{Device, IValue, Kind, Tensor};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = workspace().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

/// A real photo as f32 [1,3,h,w] in [0,1] plus its 2x box-downscaled version.
fn photo(crop: i64) -> (Tensor, Tensor) {
    let img = image::open(workspace().join("ingest/assets/photos/chelsea.png")).expect("photo").to_rgb8();
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw()).reshape([h as i64, w as i64, 3]).permute([2, 0, 1]);
    let hr = t.narrow(1, 40, crop).narrow(2, 60, crop).to_kind(Kind::Float).unsqueeze(0) / 255.0;
    let lr = hr.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
    (hr, lr)
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = (a - b).square().mean(Kind::Float).double_value(&[]);
    10.0 * (1.0 / mse).log10()
}

#[test]
fn builtins_upscale_a_real_photo_with_different_error_profiles() {
    let (hr, lr) = photo(96);
    let mut outs = Vec::new();
    for b in Builtin::ALL {
        let e = Expert::load(b.as_str(), &ExpertSource::Builtin(b), 2, Device::Cpu, 48).expect("load builtin");
        assert!(e.has_feat());
        let (sr, feat) = e.forward(&lr).expect("forward");
        assert_eq!(sr.size(), vec![1, 3, 96, 96]);
        assert_eq!(feat.expect("feat").size(), vec![1, 4, 48, 48]);
        assert!(sr.min().double_value(&[]) >= 0.0 && sr.max().double_value(&[]) <= 1.0);
        let p = psnr(&sr, &hr);
        assert!(p > 22.0, "{b}: psnr {p:.2} dB is not an upscale of the photo");
        outs.push(sr);
    }
    // Pairwise distinct: the experts are meant to disagree.
    for i in 0..outs.len() {
        for j in i + 1..outs.len() {
            let d = (&outs[i] - &outs[j]).abs().max().double_value(&[]);
            assert!(d > 1e-3, "experts {i} and {j} are identical");
        }
    }
    // Lanczos taps sum to one: a flat image stays flat at every scale.
    for s in [2u32, 3, 4] {
        let e = Expert::load("l", &ExpertSource::Builtin(Builtin::Lanczos3), s, Device::Cpu, 8).expect("load");
        let flat = Tensor::full([2, 3, 8, 8], 0.25, (Kind::Float, Device::Cpu));
        let (sr, _) = e.forward(&flat).expect("forward");
        assert_eq!(sr.size(), vec![2, 3, 8 * s as i64, 8 * s as i64]);
        assert!((sr - 0.25).abs().max().double_value(&[]) < 1e-5);
    }
}

#[test]
fn bad_expert_files_fail_at_load_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope.pt");
    let err = Expert::load("x", &ExpertSource::TorchScript(missing.clone()), 2, Device::Cpu, 16).err().expect("error");
    assert!(matches!(err, ExpertError::Load { .. }), "{err}");
    assert!(err.to_string().contains("nope.pt") && err.to_string().contains("not found"), "{err}");

    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"this is not a zip archive").expect("write");
    let err = Expert::load("x", &ExpertSource::TorchScript(junk), 2, Device::Cpu, 16).err().expect("error");
    assert!(err.to_string().contains("junk.pt") && err.to_string().contains("TorchScript"), "{err}");
}

/// Exports tiny random-weight HAT, DAT, NAFNet, SwinIR and RRDB models with export_expert.py and checks the
/// Rust forward pass against PyTorch's eager output saved by the exporter.
#[test]
fn exported_spandrel_experts_match_pytorch() {
    let dir = tempfile::tempdir().expect("tmp");
    let status = Command::new(python()).arg(workspace().join("python/tests/make_tiny_experts.py")).arg(dir.path()).status().expect("run python");
    assert!(status.success(), "make_tiny_experts.py failed");
    for (arch, scale, feat_c) in [("rrdb", 2u32, 8i64), ("swinir", 2, 12), ("hat", 2, 12), ("dat", 2, 16), ("nafnet", 1, 16)] {
        let pt = dir.path().join(format!("{arch}.pt"));
        let e = Expert::load(arch, &ExpertSource::TorchScript(pt.clone()), scale, Device::Cpu, 16).unwrap_or_else(|err| panic!("{arch}: {err}"));
        assert!(e.has_feat(), "{arch}: exporter must return (sr, feat)");
        let r = tch::CModule::load(dir.path().join(format!("{arch}.ref.pt"))).expect("reference");
        let IValue::Tuple(v) = r.forward_is(&[] as &[IValue]).expect("ref forward") else { panic!("ref tuple") };
        let [IValue::Tensor(lr), IValue::Tensor(sr_ref), IValue::Tensor(feat_ref)] = &v[..] else { panic!("3 tensors") };
        let _g = tch::no_grad_guard();
        let (sr, feat) = e.forward(lr).expect("forward");
        let feat = feat.expect("feat");
        let s = scale as i64;
        assert_eq!(sr.size(), vec![2, 3, 16 * s, 16 * s], "{arch}");
        assert_eq!(feat.size()[..2], [2, feat_c], "{arch}: feat {:?}", feat.size());
        let d_sr = (&sr - sr_ref.clamp(0.0, 1.0)).abs().max().double_value(&[]);
        let d_feat = (&feat - feat_ref).abs().max().double_value(&[]);
        assert!(d_sr < 1e-4 && d_feat < 1e-4, "{arch}: |rust - torch| sr {d_sr}, feat {d_feat}");
        // The scale is checked at load: a 2x model in a 4x run is refused before any work.
        if scale == 2 {
            let err = Expert::load(arch, &ExpertSource::TorchScript(pt), 4, Device::Cpu, 16).err().expect("mismatch");
            assert!(matches!(err, ExpertError::ScaleMismatch { got: 2, expected: 4, .. }), "{arch}: {err}");
        }
    }
}
