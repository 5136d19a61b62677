//! The PyTorch side of training (python/srcache: FusionNet, the resumable Dataset, the `srcache.train` template,
//! the wheel), on a real cache and real runs made by the binary:
//! - `srcache.torch.FusionNet.from_run` equals the run's `fusion.pt` and the trainer's own model (loaded here
//!   from the same `ema.safetensors`) within 1e-5, for the gating, frequency + edge-refine and delta (PCA
//!   features) heads; a PyTorch fine-tune lowers the loss, its weights load into the Rust model, and its export
//!   loads in `FusionModule`, `srcache infer --run` and `srcache eval --run`;
//! - the Dataset: epochs reach persistent workers, mid-epoch resume (2 workers, and 2 torchrun ranks), BasicSR
//!   samples, URLs refused;
//! - `python -m srcache.train` under torchrun (2 ranks, gloo): trains, validates, checkpoints, and a run
//!   stopped at step 3 and resumed ends with the uninterrupted run's weights; its full-image validation
//!   (`--val-dir`, experts from the cache's schema, tiled and blended as in Rust, MATLAB-bicubic LR made when a
//!   folder has none) on a `srcache train` run's weights equals `srcache eval` and the run's own val.json;
//! - `pip wheel ./python` installs into a fresh venv that cannot see the repository and runs the template.

use std::path::Path;
use std::process::Command;

use srcache_experts::{Fuser, FusionModule};
use srcache_tests::{photos_dir, srcache_bin, venv_python, workspace};
use srcache_trainer::{FusionNet, TrainConfig};
use tch::{nn::VarStore, Device, Tensor};

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn python() -> Command {
    let mut c = Command::new(venv_python());
    c.env("OMP_NUM_THREADS", "1");
    c
}

fn torchrun() -> Command {
    let mut c = Command::new(workspace().join(".venv/bin/torchrun"));
    c.args(["--standalone", "--nproc_per_node", "2"]).env("OMP_NUM_THREADS", "1");
    c
}

/// A cache of the shipped photos, x2, 24x24 LR patches, two built-in experts with 4-channel features.
fn cache(out: &Path, extra: &[&str]) {
    run_ok(
        Command::new(srcache_bin())
            .args(["cache", "--hr"])
            .arg(photos_dir())
            .args(["--scale", "2", "--patch", "24", "--stride", "48", "--quiet"])
            .args(["--expert", "bic=builtin:bicubic", "--expert", "lan=builtin:lanczos3"])
            .args(extra)
            .arg("--out")
            .arg(out),
    );
}

/// A 20-step run with a tiny model; batch 1 so the held-out validation reads every held-out sample (the
/// template's validation is compared with it).
fn train(data: &Path, run: &Path, model: &str) {
    let cfg = run.with_extension("toml");
    let text = format!(
        "steps = 20\nlog_every = 5\nval_every = 20\nckpt_every = 20\nval_fraction = 0.2\nseed = 1\nval_max_samples = 1000\ndevice = \"cpu\"\nthreads = 1\n\
         [model]\nwidth = 8\nblocks = 1\n{model}\n[loader]\nbatch_size = 1\ncrop = 12\nworkers = 1\n[optim]\nwarmup_steps = 2\nlr = 0.002\n"
    );
    std::fs::write(&cfg, text).expect("config");
    run_ok(Command::new(srcache_bin()).args(["train", "--data"]).arg(data).arg("--out").arg(run).arg("--config").arg(&cfg));
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// (lr_up, sr per expert, feat per feature expert) from check_fusion.py's dump.
fn inputs(path: &Path) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
    let all = read(path);
    let pick = |prefix: &str| -> Vec<Tensor> {
        let mut v: Vec<(usize, Tensor)> =
            all.iter().filter_map(|(n, t)| n.strip_prefix(prefix).and_then(|k| k.parse().ok()).map(|k| (k, t.shallow_clone()))).collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, t)| t).collect()
    };
    let lr_up = all.iter().find(|(n, _)| n == "lr_up").map(|(_, t)| t.shallow_clone()).expect("lr_up");
    (lr_up, pick("sr"), pick("feat"))
}

fn output(path: &Path) -> Tensor {
    read(path).into_iter().find(|(n, _)| n == "out").map(|(_, t)| t).expect("out")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The trainer's model of `run` (its config.toml) with the weights of `weights`.
fn rust_model(run: &Path, weights: &Path) -> (VarStore, FusionNet) {
    let cfg = TrainConfig::from_toml_file(&run.join("config.toml")).expect("config");
    let mut vs = VarStore::new(Device::Cpu);
    let net = FusionNet::new(&vs.root(), &cfg.model).expect("model");
    vs.load(weights).unwrap_or_else(|e| panic!("{}: {e}", weights.display()));
    (vs, net)
}

/// A small HR image cut from a photo (eval and infer then take a second or two).
fn small_png(path: &Path, side: u32) {
    let img = image::open(photos_dir().join("chelsea.png")).expect("photo").to_rgb8();
    let crop = image::imageops::crop_imm(&img, 100, 80, side, side).to_image();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    crop.save(path).expect("save png");
}

#[test]
fn fusion_net_in_pytorch_matches_the_trainer_and_exports_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let tests = workspace().join("python/tests");
    let (data, pca) = (t.join("cache"), t.join("cache_pca"));
    cache(&data, &[]);
    cache(&pca, &["--feat-pca", "2"]);
    let runs = [
        ("gating", &data, "head = \"gating\""),
        ("frequency", &data, "head = \"frequency\"\nedge_refine = true"),
        ("delta_pca", &pca, "head = \"delta\"\ndelta_expert = 1"),
    ];
    for (name, data, model) in runs {
        let run = t.join(format!("run_{name}"));
        train(data, &run, model);
        let (dump, out_run) = (t.join(format!("dump_{name}")), t.join(format!("ft_{name}")));
        let out = run_ok(python().arg(tests.join("check_fusion.py")).arg(&run).arg(data).arg(&dump).arg(&out_run));
        println!("{name}:\n{out}");
        assert!(out.contains("ok FusionNet.from_run") && out.contains("ok fine-tuned") && out.contains("ok exported"), "{out}");
        assert!(out.contains("ok template validation = Rust val.json") || out.contains("skipped: "), "{out}");

        // The Rust trainer's model with the run's EMA weights, on the same inputs.
        let (lr_up, srs, feats) = inputs(&dump.join("inputs.safetensors"));
        let (_vs, net) = rust_model(
            &run,
            &run.join("ckpt").join(std::fs::read_to_string(run.join("ckpt/latest")).expect("latest").trim()).join("ema.safetensors"),
        );
        let _g = tch::no_grad_guard();
        let d = max_diff(&net.forward(&lr_up, &srs, &feats).expect("forward"), &output(&dump.join("py_out.safetensors")));
        assert!(d <= 1e-5, "{name}: Rust model vs FusionNet: {d}");
        // The PyTorch fine-tune's weights, saved under the VarStore names, load into the Rust model.
        let (_vs2, ft) = rust_model(&run, &dump.join("ft.safetensors"));
        let d2 = max_diff(&ft.forward(&lr_up, &srs, &feats).expect("forward"), &output(&dump.join("ft_out.safetensors")));
        assert!(d2 <= 1e-5, "{name}: fine-tuned weights in Rust vs PyTorch: {d2}");
        // Its export is what eval/infer load.
        let (lr_up, srs, feats) = inputs(&dump.join("inputs_full.safetensors"));
        let m = FusionModule::load(&out_run, Device::Cpu).expect("load the PyTorch export");
        let d3 = max_diff(&m.fuse(&lr_up, &srs, &feats).expect("fuse"), &output(&dump.join("ft_full_out.safetensors")));
        assert!(d3 <= 1e-5, "{name}: exported fusion.pt in Rust vs PyTorch: {d3}");
        println!("{name}: Rust model = FusionNet within {d:.2e}; fine-tuned weights {d2:.2e}; exported module {d3:.2e}");
    }

    // srcache infer / eval load the PyTorch export.
    let bench = t.join("bench");
    small_png(&bench.join("HR/cat.png"), 48);
    small_png(&t.join("lr/cat.png"), 24);
    let ft = t.join("ft_gating");
    let out = run_ok(
        Command::new(srcache_bin())
            .arg("infer")
            .arg(t.join("lr"))
            .arg("--out")
            .arg(t.join("sr"))
            .arg("--cache")
            .arg(&data)
            .arg("--run")
            .arg(&ft)
            .arg("--fused-only"),
    );
    assert!(t.join("sr/cat_fused.png").is_file(), "{out}");
    let out = run_ok(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--cache").arg(&data).arg("--run").arg(&ft));
    assert!(out.contains("fused"), "{out}");
    let out = run_ok(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--cache").arg(&pca).arg("--run").arg(t.join("ft_delta_pca")));
    assert!(out.contains("fused"), "{out}");
}

#[test]
fn dataset_resumes_and_template_trains_under_torchrun() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let tests = workspace().join("python/tests");
    let data = t.join("cache");
    cache(&data, &[]);
    let check = tests.join("check_dataset_resume.py");
    let out = run_ok(python().arg(&check).arg(&data));
    println!("{out}");
    assert_eq!(out.matches("\nok ").count() + usize::from(out.starts_with("ok ")), 4, "{out}");
    let out = run_ok(torchrun().arg(&check).arg(&data).arg("--ddp"));
    println!("{out}");
    assert!(out.contains("ok ddp world 2"), "{out}");

    // The template: 6 steps straight, and 3 steps then --resume to 6, on 2 ranks.
    let args = |run: &Path, steps: &str| -> Vec<String> {
        let mut v: Vec<String> = ["--module", "srcache.train", "--data"].map(String::from).to_vec();
        v.push(data.display().to_string());
        v.push("--out".into());
        v.push(run.display().to_string());
        v.extend(
            ["--steps", steps, "--batch", "2", "--crop", "12", "--workers", "1", "--width", "8", "--blocks", "1", "--warmup", "2", "--lr", "0.002"]
                .map(String::from),
        );
        v.extend(
            ["--val-every", "6", "--ckpt-every", "3", "--log-every", "1", "--threads", "1", "--val-fraction", "0.2", "--seed", "1"].map(String::from),
        );
        v
    };
    let (a, b) = (t.join("tpl_a"), t.join("tpl_b"));
    let out = run_ok(torchrun().args(args(&a, "6")));
    println!("{out}");
    assert!(out.contains("world 2") && out.contains("validation at step 6") && out.contains("exported"), "{out}");
    assert!(out.contains("tensorboard: skipped") || out.contains("tensorboard: "), "{out}");
    run_ok(torchrun().args(args(&b, "3")));
    let out = run_ok(torchrun().args(args(&b, "6")).arg("--resume"));
    assert!(out.contains("resumed from step 3"), "{out}");
    let out = run_ok(python().arg(tests.join("check_template.py")).arg(&a).arg(&b));
    println!("{out}");
    assert!(out.starts_with("ok "), "{out}");
    // Its export is what `srcache eval` loads.
    let bench = t.join("bench");
    small_png(&bench.join("HR/cat.png"), 48);
    let out = run_ok(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--cache").arg(&data).arg("--run").arg(&a));
    assert!(out.contains("fused"), "{out}");

    // The wheel, in a venv that does not see the repository (torch and numpy come from the project venv's
    // site-packages by a .pth line, which does not run that venv's editable-install hook).
    let wheels = t.join("wheels");
    run_ok(python().args(["-m", "pip", "wheel", "--quiet", "--no-deps", "-w"]).arg(&wheels).arg(workspace().join("python")));
    let whl =
        std::fs::read_dir(&wheels).expect("wheels").flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "whl")).expect("a wheel");
    let listing = run_ok(python().args(["-m", "zipfile", "-l"]).arg(&whl));
    for f in ["srcache/train.py", "srcache/fusion.py", "srcache/torch.py", "srcache/metrics.py", "srcache/dataset.py"] {
        assert!(listing.contains(f), "{f} not in the wheel:\n{listing}");
    }
    let venv = t.join("venv");
    run_ok(python().args(["-m", "venv", "--without-pip"]).arg(&venv));
    let vpy = venv.join("bin/python");
    run_ok(python().args(["-m", "pip", "--python"]).arg(&vpy).args(["install", "--quiet", "--no-deps", "--no-index"]).arg(&whl));
    let site = run_ok(Command::new(&vpy).args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]));
    let project_site = run_ok(python().args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]));
    std::fs::write(Path::new(site.trim()).join("zz_project_deps.pth"), format!("{}\n", project_site.trim())).expect("pth");
    let clean =
        |c: &mut Command| -> String { run_ok(c.env_remove("PYTHONPATH").env_remove("PYTHONHOME").env("OMP_NUM_THREADS", "1").current_dir(t)) };
    let imported = clean(Command::new(&vpy).args([
        "-c",
        "import srcache, srcache.torch, srcache.train, srcache.fusion; print(srcache.__file__); print(srcache.torch.FusionNet.__module__)",
    ]));
    assert!(imported.starts_with(site.trim()) && !imported.contains("/work/main/python"), "{imported}");
    let w = t.join("tpl_wheel");
    let out = clean(Command::new(venv.join("bin/srcache-train")).args(args(&w, "2").split_off(2)).args(["--workers", "0"]));
    assert!(out.contains("exported") && w.join("fusion.pt").is_file(), "{out}");
    println!("wheel {} installed in a fresh venv: {}", whl.display(), imported.trim());
}

/// `cut` (x, y, w, h) of a shipped photo, saved as a PNG.
fn cut_png(path: &Path, photo: &str, (x, y, w, h): (u32, u32, u32, u32)) -> image::RgbImage {
    let img = image::open(photos_dir().join(photo)).expect("photo").to_rgb8();
    let crop = image::imageops::crop_imm(&img, x, y, w, h).to_image();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    crop.save(path).expect("save png");
    crop
}

#[test]
fn template_full_image_validation_equals_srcache_eval() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let data = t.join("cache");
    cache(&data, &[]);
    // Two benchmark folders: one without LR (made with MATLAB bicubic; sizes not multiples of the scale, so
    // HR is mod-cropped), one with its own LR_bicubic/X2 partner (not MATLAB's, so it must be read, not made).
    // All larger than the 24 px patch: the experts run in blended tiles.
    let (a, b) = (t.join("bench_a"), t.join("bench_b"));
    cut_png(&a.join("HR/cat.png"), "chelsea.png", (100, 80, 75, 70));
    cut_png(&a.join("HR/cup.png"), "coffee.png", (10, 20, 90, 61));
    let hr = cut_png(&b.join("HR/rocket.png"), "rocket.png", (60, 40, 64, 52));
    let lr = image::imageops::resize(&hr, 32, 26, image::imageops::FilterType::Triangle);
    std::fs::create_dir_all(b.join("LR_bicubic/X2")).expect("mkdir");
    lr.save(b.join("LR_bicubic/X2/rocketx2.png")).expect("save lr");

    // A Rust run validating on both folders (tiles = the cache's patch size, its default).
    let run = t.join("run");
    let cfg = t.join("run.toml");
    let text = format!(
        "steps = 20\nlog_every = 10\nval_every = 20\nckpt_every = 20\nval_fraction = 0.2\nseed = 1\ndevice = \"cpu\"\nthreads = 1\n\
         val_dirs = [{:?}, {:?}]\n[model]\nwidth = 8\nblocks = 1\nhead = \"gating\"\n[loader]\nbatch_size = 2\ncrop = 12\nworkers = 1\n\
         [optim]\nwarmup_steps = 2\nlr = 0.002\n",
        a.display().to_string(),
        b.display().to_string()
    );
    std::fs::write(&cfg, text).expect("config");
    run_ok(Command::new(srcache_bin()).args(["train", "--data"]).arg(&data).arg("--out").arg(&run).arg("--config").arg(&cfg));

    // The template on the same weights, validating only.
    let tpl = t.join("tpl");
    let out = run_ok(
        python()
            .args(["-m", "srcache.train", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&tpl)
            .arg("--init-run")
            .arg(&run)
            .args(["--eval-only", "--workers", "0", "--threads", "1", "--val-fraction", "0.2", "--seed", "1", "--val-dir"])
            .arg(&a)
            .arg("--val-dir")
            .arg(&b),
    );
    println!("{out}");
    assert!(out.contains("full-image validation: 3 images in 2 folders") && out.contains("matlab_bicubic"), "{out}");

    // srcache eval of the same folders with the run's fusion.pt, experts tiled as the trainer tiles them.
    let ev = t.join("eval.json");
    run_ok(
        Command::new(srcache_bin())
            .arg("eval")
            .arg(&a)
            .arg(&b)
            .arg("--cache")
            .arg(&data)
            .arg("--run")
            .arg(&run)
            .args(["--tile", "24", "--no-baselines", "--json"])
            .arg(&ev),
    );
    let out = run_ok(
        python().arg(workspace().join("python/tests/check_template.py")).arg("--full").arg(tpl.join("val.json")).arg(&ev).arg(run.join("val.json")),
    );
    println!("{out}");
    assert!(out.contains("ok template full-image validation = srcache eval") && out.contains("= Rust trainer val.json"), "{out}");
}
