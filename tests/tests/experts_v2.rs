//! Experts v2 (issue 20): random-weight spandrel models (python/tests/make_v2_experts.py) exported by
//! `python -m srcache.export`, a compact CNN (SRVGG) and SwinIR as AOTInductor packages (.pt2, dynamic batch and
//! size, padding inside the graph) and all five archs (+ HAT, DAT, RRDB) as TorchScript with metadata, then:
//! - loaded by srcache and compared with spandrel's eager model on odd-sized images (<= 1e-4);
//! - through `srcache cache` at LR patch sizes 32, 48 and 64 (a traced-only expert refused at 48 from its
//!   metadata, before it runs, naming the sizes that work and the export command that fixes it);
//! - through `eval` and `infer` on a 75x112 LR image (150x224 HR), whole-image, pixels compared across formats;
//! - the exporter's feature-layer errors and --no-feat.
//!
//! AOTInductor compiles C++ at export (1-3 minutes per model on 2 cores), so only two models are .pt2 here,
//! exported in parallel once for the whole file. `SRCACHE_V2_PT2=compact,swinir,hat,dat,rrdb` makes every arch
//! a package too (scripts/experts-long.sh: the long check, not part of CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use srcache_experts::{Expert, ExpertError, ExpertSource};
use srcache_tests::{photos_dir, srcache_bin, venv_python, workspace};
use tch::{Device, IValue, Tensor};

const PT2_DEFAULT: [&str; 2] = ["compact", "swinir"];
const TS: [&str; 5] = ["compact", "swinir", "hat", "dat", "rrdb"];

/// The archs exported as .pt2: $SRCACHE_V2_PT2 (comma list of TS's archs), else PT2_DEFAULT.
fn pt2_archs() -> &'static [&'static str] {
    static ARCHS: OnceLock<Vec<&'static str>> = OnceLock::new();
    ARCHS.get_or_init(|| match std::env::var("SRCACHE_V2_PT2") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|a| *TS.iter().find(|t| **t == a.trim()).unwrap_or_else(|| panic!("SRCACHE_V2_PT2: unknown arch {a:?}, not in {TS:?}")))
            .collect(),
        _ => PT2_DEFAULT.to_vec(),
    })
}

fn output(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().expect("spawn");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, text) = output(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf8")
}

fn export_cmd(dir: &Path, arch: &str, out: &str) -> Command {
    let mut c = Command::new(venv_python());
    c.current_dir(workspace().join("python")).args(["-m", "srcache.export", "--checkpoint"]).arg(dir.join(format!("{arch}.pth")));
    c.args(["--scale", "2", "--size", "32", "--out"]).arg(dir.join(out));
    c
}

/// The exported experts, made once for every test of this file.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace().join("target/experts-v2");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        run_ok(Command::new(venv_python()).arg(workspace().join("python/tests/make_v2_experts.py")).arg(&dir));
        let t0 = std::time::Instant::now();
        // The AOTInductor compiles in parallel (two by default, one per core); the TorchScript traces meanwhile.
        let mut children: Vec<(String, std::process::Child)> = pt2_archs()
            .iter()
            .map(|a| {
                let child = export_cmd(&dir, a, &format!("{a}.pt2"))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn export");
                (a.to_string(), child)
            })
            .collect();
        for a in TS {
            let text = run_ok(&mut export_cmd(&dir, a, &format!("{a}.pt")));
            println!("{}", text.lines().last().unwrap_or(""));
        }
        for (a, child) in children.drain(..) {
            let o = child.wait_with_output().expect("wait export");
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "export of {a}.pt2 failed:\n{text}");
            println!("{}", text.lines().rfind(|l| l.contains(".pt2:")).unwrap_or(""));
        }
        println!("exports took {:.0} s", t0.elapsed().as_secs_f64());
        dir
    })
}

/// (lr, sr, feat) of spandrel's eager model, written by make_v2_experts.py.
fn reference(dir: &Path, arch: &str) -> (Tensor, Tensor, Tensor) {
    let r = tch::CModule::load(dir.join(format!("{arch}.ref.pt"))).expect("reference");
    let IValue::Tuple(v) = r.forward_is(&[] as &[IValue]).expect("ref forward") else { panic!("ref tuple") };
    let [IValue::Tensor(lr), IValue::Tensor(sr), IValue::Tensor(feat)] = &v[..] else { panic!("3 tensors") };
    (lr.shallow_clone(), sr.shallow_clone(), feat.shallow_clone())
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn exported_experts_match_eager_pytorch_at_odd_sizes() {
    let dir = fixture();
    let _g = tch::no_grad_guard();
    let files: Vec<(String, &str)> = pt2_archs().iter().map(|a| (format!("{a}.pt2"), *a)).chain(TS.iter().map(|a| (format!("{a}.pt"), *a))).collect();
    for (file, arch) in &files {
        let src = ExpertSource::TorchScript(dir.join(file));
        let (lr, sr_ref, feat_ref) = reference(dir, arch);
        let hw = lr.size()[2] as usize;
        let e = Expert::load(arch, &src, 2, Device::Cpu, hw).unwrap_or_else(|err| panic!("{file}: {err}"));
        let meta = e.meta().unwrap_or_else(|| panic!("{file}: no srcache metadata"));
        assert_eq!((meta.scale, meta.feat_channels as i64), (2, feat_ref.size()[1]), "{file}: {meta:?}");
        assert_eq!(meta.checkpoint_sha256.as_deref().map(str::len), Some(64), "{file}");
        let (sr, feat) = e.forward(&lr).unwrap_or_else(|err| panic!("{file}: {err}"));
        let feat = feat.expect("feat");
        let (d_sr, d_feat) = (max_abs(&sr, &sr_ref.clamp(0.0, 1.0)), max_abs(&feat, &feat_ref));
        println!("{file:<12} {:?} max |srcache - eager| sr {d_sr:.2e} feat {d_feat:.2e}", lr.size());
        assert!(d_sr <= 1e-4 && d_feat <= 1e-4, "{file}: sr {d_sr}, feat {d_feat}");
    }
    // A package takes any batch and size (the padding to SwinIR's window is inside it), with the exact crop.
    for arch in pt2_archs() {
        let e = Expert::load(arch, &ExpertSource::TorchScript(dir.join(format!("{arch}.pt2"))), 2, Device::Cpu, 32).expect("load");
        for (b, h, w) in [(1i64, 16i64, 16i64), (3, 33, 47), (2, 48, 17)] {
            let x = Tensor::rand([b, 3, h, w], (tch::Kind::Float, Device::Cpu));
            let (sr, feat) = e.forward(&x).unwrap_or_else(|err| panic!("{arch} at {b}x{h}x{w}: {err}"));
            assert_eq!(sr.size(), vec![b, 3, 2 * h, 2 * w], "{arch}");
            assert_eq!(feat.expect("feat").size()[2..], [h, w], "{arch}");
        }
        // Below the architecture's minimum: refused from the metadata, not a libtorch error.
        let min = e.meta().expect("meta").min_size as i64;
        if min > 2 {
            let x = Tensor::rand([1, 3, min - 1, min - 1], (tch::Kind::Float, Device::Cpu));
            let err = e.forward(&x).expect_err("too small");
            assert!(matches!(err, ExpertError::SizeRefused { .. }), "{arch}: {err}");
        }
    }
}

#[test]
fn cache_runs_every_expert_at_patch_32_48_64() {
    let dir = fixture();
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    std::fs::create_dir_all(&hr).expect("mkdir");
    std::fs::copy(photos_dir().join("astronaut.png"), hr.join("astronaut.png")).expect("copy");
    let experts = |patch: u32| -> Vec<String> {
        let mut v: Vec<String> = pt2_archs().iter().map(|a| format!("{a}2={}", p(&dir.join(format!("{a}.pt2"))))).collect();
        // DAT's trace keeps its traced size (32); the other traces run at any size.
        v.extend(TS.iter().filter(|a| **a != "dat" || patch == 32).map(|a| format!("{a}={}", p(&dir.join(format!("{a}.pt"))))));
        v
    };
    for patch in [32u32, 48, 64] {
        let out = tmp.path().join(format!("cache{patch}"));
        let mut c = Command::new(srcache_bin());
        c.args(["cache", "--hr", p(&hr), "--scale", "2", "--patch", &patch.to_string(), "--stride", &patch.to_string()]);
        // --halo 0: the experts see exactly the patch, the sizes under test (the halo is tested elsewhere).
        c.args(["--limit", "6", "--halo", "0", "--quiet", "--out", p(&out)]);
        for e in experts(patch) {
            c.args(["--expert", &e]);
        }
        let text = run_ok(&mut c);
        assert!(text.contains("samples 6"), "patch {patch}: {text}");
        let inspect: serde_json::Value =
            serde_json::from_str(&run_ok(Command::new(srcache_bin()).args(["inspect", p(&out), "--json"]))).expect("json");
        let tensors = inspect["tensors"].as_array().expect("tensors");
        for e in experts(patch) {
            let name = e.split('=').next().expect("name");
            for t in ["sr", "feat"] {
                assert!(tensors.iter().any(|x| x["name"] == format!("{t}/{name}")), "patch {patch}: no {t}/{name}");
            }
        }
    }
    // The traced-only expert at 48: refused from its metadata, naming the size that works and the fix.
    let out = tmp.path().join("refused");
    let (ok, text) = output(
        Command::new(srcache_bin())
            .args(["cache", "--hr", p(&hr), "--scale", "2", "--patch", "48", "--halo", "0", "--limit", "2", "--quiet"])
            .args(["--out", p(&out), "--expert", &format!("dat={}", p(&dir.join("dat.pt")))]),
    );
    assert!(!ok, "{text}");
    for needle in ["cannot take a 48x48 input", "only 32x32", "--patch 32", "python -m srcache.export", "dat.pt2"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(!out.exists(), "a refused run left its output folder (records written before the refusal)");
}

/// A 150x224 HR crop of a real photo (so a 75x112 LR at x2).
fn odd_images(root: &Path) -> (PathBuf, PathBuf) {
    let img = image::open(photos_dir().join("coffee.png")).expect("photo").to_rgb8();
    let hr = image::imageops::crop_imm(&img, 101, 57, 224, 150).to_image();
    let bench = root.join("bench");
    std::fs::create_dir_all(bench.join("HR")).expect("mkdir");
    hr.save(bench.join("HR/coffee.png")).expect("save");
    let lr = image::imageops::crop_imm(&img, 11, 23, 112, 75).to_image();
    let lr_path = root.join("lr.png");
    lr.save(&lr_path).expect("save");
    (bench, lr_path)
}

#[test]
fn eval_and_infer_on_odd_sized_images() {
    let dir = fixture();
    let tmp = tempfile::tempdir().expect("tmp");
    let (bench, lr) = odd_images(tmp.path());
    let mut specs: Vec<String> = pt2_archs().iter().map(|a| format!("{a}2={}", p(&dir.join(format!("{a}.pt2"))))).collect();
    specs.extend(TS.iter().map(|a| format!("{a}={}", p(&dir.join(format!("{a}.pt"))))));
    let with_experts = |c: &mut Command| {
        for s in &specs {
            c.args(["--expert", s]);
        }
    };
    let json = tmp.path().join("eval.json");
    let mut c = Command::new(srcache_bin());
    c.args(["eval", p(&bench), "--scale", "2", "--tile", "0", "--json", p(&json)]);
    with_experts(&mut c);
    let text = run_ok(&mut c);
    // DAT's trace runs in 32x32 tiles, from its metadata, with a note; the rest run whole.
    assert!(text.contains("expert dat does not accept"), "{text}");
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    for s in &specs {
        let name = s.split('=').next().expect("name");
        let row = rows.as_array().expect("rows").iter().find(|r| r["method"] == name).unwrap_or_else(|| panic!("no row {name}: {text}"));
        assert!(row["psnr"].as_f64().is_some_and(f64::is_finite), "{name}: {row}");
    }
    let out = tmp.path().join("infer");
    let mut c = Command::new(srcache_bin());
    c.args(["infer", p(&lr), "--scale", "2", "--tile", "0", "--out", p(&out)]);
    with_experts(&mut c);
    run_ok(&mut c);
    let load = |name: &str| image::open(out.join(format!("lr_{name}.png"))).expect("output png").to_rgb8();
    for s in &specs {
        let name = s.split('=').next().expect("name");
        assert_eq!(load(name).dimensions(), (224, 150), "{name}");
    }
    // The same weights as a package and as a trace give the same pixels (up to one level of rounding).
    // DAT's trace runs in 32x32 tiles (above), the package whole: not the same computation at tile seams.
    for a in pt2_archs().iter().filter(|a| **a != "dat") {
        let (x, y) = (load(&format!("{a}2")), load(a));
        let worst = x.as_raw().iter().zip(y.as_raw()).map(|(u, v)| u.abs_diff(*v)).max().unwrap_or(0);
        assert!(worst <= 1, "{a}: .pt2 and .pt outputs differ by {worst} levels");
    }
}

#[test]
fn exporter_feature_layer_errors_and_sr_only() {
    let dir = fixture();
    let mut c = export_cmd(dir, "compact", "bad.pt");
    c.args(["--feature-layer", "nope"]);
    let (ok, text) = output(&mut c);
    assert!(!ok, "{text}");
    // The candidates are listed by name, so the user can pick one.
    for needle in ["no layer 'nope'", "body.1 (8 ch)", "--feature-layer NAME", "--no-feat"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let mut c = export_cmd(dir, "compact", "nofeat.pt");
    c.arg("--no-feat");
    run_ok(&mut c);
    let e = Expert::load("nf", &ExpertSource::TorchScript(dir.join("nofeat.pt")), 2, Device::Cpu, 37).expect("load sr-only");
    assert!(!e.has_feat());
    assert_eq!(e.meta().map(|m| m.feat_layer.as_str()), Some(""));
    // Picking a layer by name.
    let mut c = export_cmd(dir, "compact", "body3.pt");
    c.args(["--feature-layer", "body.3"]);
    run_ok(&mut c);
    let e = Expert::load("b3", &ExpertSource::TorchScript(dir.join("body3.pt")), 2, Device::Cpu, 20).expect("load");
    assert_eq!(e.meta().map(|m| m.feat_layer.as_str()), Some("body.3"));
}
