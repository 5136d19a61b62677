//! What a new user meets first (issue #22), through the real binary on the shipped photos: one patch/stride
//! default for the CLI and `cache.toml`, a cache `--variant` flag, examples that parse, honest messages
//! (`doctor` without a GPU, `diff`, `verify`, `inspect` of a PCA cache, the PCA fit's progress), the manifest's
//! `source` relative to the input root, automatic re-tiling of a window-size expert on an odd-size image, and
//! deterministic test-script gates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use srcache_formats::Dataset;
use srcache_tests::{photos_dir, srcache_bin, venv_python, workspace};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed:\n{}", text(&o));
    text(&o)
}

/// Two of the shipped photos in a folder of their own (small: the caches below take a second each).
fn two_photos(root: &Path) -> PathBuf {
    let d = root.join("photos");
    std::fs::create_dir_all(&d).expect("mkdir");
    for name in ["chelsea.png", "rocket.png"] {
        std::fs::copy(photos_dir().join(name), d.join(name)).expect("copy");
    }
    d
}

fn cache_cmd(hr: &Path, out: &Path) -> Command {
    let mut c = Command::new(srcache_bin());
    c.arg("cache").arg("--hr").arg(hr).arg("--out").arg(out).args(["--scale", "2", "--expert", "bic=builtin:bicubic", "-q"]);
    c
}

fn samples(dir: &Path) -> usize {
    Dataset::open(dir).expect("open").len()
}

#[test]
fn patch_without_stride_means_adjacent_patches_in_cli_and_toml_alike() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = two_photos(tmp.path());
    // CLI: --patch 32 alone, and with --stride 32 spelled out.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(cache_cmd(&hr, &a).args(["--patch", "32"]));
    ok(cache_cmd(&hr, &b).args(["--patch", "32", "--stride", "32"]));
    // TOML: patch = 32 and no stride (this used to cache with stride 64: a quarter of the samples).
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "out = {:?}\n[input]\nhr_dir = {:?}\nscale = 2\npatch = 32\n[[experts]]\nname = \"bic\"\nbuiltin = \"bicubic\"\n",
            tmp.path().join("c").display().to_string(),
            hr.display().to_string()
        ),
    )
    .expect("toml");
    ok(Command::new(srcache_bin()).arg("cache").arg("--config").arg(&cfg).arg("-q"));
    let n = samples(&a);
    assert_eq!(n, samples(&b), "--patch 32 and --patch 32 --stride 32 differ");
    assert_eq!(n, samples(&tmp.path().join("c")), "cache.toml patch = 32 without stride is not stride 32");
    // chelsea 451x300 and rocket 640x427 at x2: LR 225x150 and 320x213; 32-pixel windows flush with the end.
    let windows = |len: u32| len.div_ceil(32);
    let expected = (windows(225) * windows(150) + windows(320) * windows(213)) as usize;
    assert_eq!(n, expected);
    // A rerun that spells the default out is the same cache, not "a different config".
    let again = ok(cache_cmd(&hr, &a).args(["--patch", "32", "--stride", "32"]));
    assert!(again.contains("already complete"), "{again}");
    // The defaults are stated in --help, for both ways in.
    let help = ok(Command::new(srcache_bin()).args(["cache", "--help"]));
    assert!(help.contains("[default: 64]") && help.contains("[default: the patch size"), "{help}");
    let help = ok(Command::new(srcache_bin()).args(["ingest", "patches", "--help"]));
    assert!(help.contains("[default: the patch size") && help.contains("HR image folder"), "{help}");
}

#[test]
fn cache_takes_variants_on_the_command_line_and_sources_are_relative_to_the_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = two_photos(tmp.path());
    let out = tmp.path().join("v");
    ok(cache_cmd(&hr, &out).args(["--patch", "48", "--variant", "clean", "--variant", "blur:1.2+noise:5"]));
    let ds = Dataset::open(&out).expect("open");
    let variants: std::collections::BTreeSet<&str> = ds.manifest().iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(variants.len(), 2, "{variants:?}");
    let clean = tmp.path().join("clean");
    ok(cache_cmd(&hr, &clean).args(["--patch", "48"]));
    assert_eq!(ds.len(), 2 * samples(&clean), "each variant is cached as its own samples");
    let sources: std::collections::BTreeSet<&str> = ds.manifest().iter().map(|r| r.source.as_str()).collect();
    assert_eq!(sources.into_iter().collect::<Vec<_>>(), ["chelsea.png", "rocket.png"], "source is not relative to --hr");
}

#[test]
fn the_example_configs_parse_and_the_train_example_states_the_defaults() {
    let cache = srcache_cache::CacheConfig::from_toml_file(&workspace().join("cache/run.example.toml")).expect("cache/run.example.toml");
    cache.validate().expect("valid");
    assert!(!cache.input.variants.is_empty(), "the cache example shows variants");
    let train = srcache_trainer::TrainConfig::from_toml_file(&workspace().join("trainer/train.example.toml")).expect("trainer/train.example.toml");
    assert_eq!(train, srcache_trainer::TrainConfig::default(), "train.example.toml must state the defaults");
}

#[test]
fn doctor_says_why_there_is_no_cuda_device() {
    let out = ok(Command::new(srcache_bin()).arg("doctor"));
    if !out.contains("cuda devices   0") {
        println!("skipped: this machine has a CUDA device ({out})");
        return;
    }
    let line = out.lines().find(|l| l.starts_with("cuda devices")).unwrap_or_default();
    assert!(line.len() > "cuda devices   0: ".len() + 20, "no reason given: {line:?}");
    assert!(line.contains("driver") || line.contains("CPU-only"), "{line}");
    let json: serde_json::Value = serde_json::from_str(&ok(Command::new(srcache_bin()).args(["doctor", "--json"]))).expect("json");
    assert!(json["cuda_unavailable"].as_str().is_some_and(|s| !s.is_empty()), "{json}");
}

/// Shell scripts under `set -o pipefail` must not pipe into a reader that exits at its first match
/// (`grep -q`, `head`): the writer then dies of SIGPIPE (rc 141) now and then, and the pipeline fails at random.
/// That made `scripts/test.sh` red about one run in five.
#[test]
fn no_script_closes_a_pipe_early_under_pipefail() {
    let mut bad = Vec::new();
    for dir in ["scripts", "deploy/slurm", ".ci"] {
        let Ok(entries) = std::fs::read_dir(workspace().join(dir)) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(body) = std::fs::read_to_string(&path) else { continue };
            if !body.contains("pipefail") {
                continue;
            }
            for (n, line) in body.lines().enumerate() {
                let code = line.split(" #").next().unwrap_or_default();
                if code.trim_start().starts_with('#') {
                    continue;
                }
                let early = ["| grep -q", "|grep -q", "| head", "|head", "| grep -m", "| sed -n 1p"];
                if early.iter().any(|p| code.contains(p)) {
                    bad.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "early-closing pipes under pipefail:\n{}", bad.join("\n"));
}

#[test]
fn diff_and_verify_speak_in_words() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = two_photos(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(cache_cmd(&hr, &a).args(["--patch", "48"]));
    ok(cache_cmd(&hr, &b).args(["--patch", "48", "--lossless"]));
    let o = run(Command::new(srcache_bin()).arg("diff").arg(&a).arg(&b));
    assert!(!o.status.success());
    let t = text(&o);
    assert!(!t.contains("Some(") && !t.contains("TensorSpec {") && !t.contains("ManifestRow {"), "debug structures:\n{t}");
    assert!(t.contains("sr/bic u8") && t.contains("sr/bic f16"), "{t}");
    // A flipped byte in a shard: the problem line names the shard once.
    let shard = a.join("shard-00000.srs");
    let mut bytes = std::fs::read(&shard).expect("read");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x55;
    std::fs::write(&shard, bytes).expect("write");
    let o = run(Command::new(srcache_bin()).arg("verify").arg(&a).arg("-q"));
    assert!(!o.status.success());
    let t = text(&o);
    let line = t.lines().find(|l| l.starts_with("PROBLEM")).unwrap_or_else(|| panic!("no problem line:\n{t}"));
    assert_eq!(line.matches("shard-00000.srs").count(), 1, "{line}");
}

#[test]
fn a_pca_cache_shows_its_fit_and_inspect_summarises_the_basis() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = two_photos(tmp.path());
    let out = tmp.path().join("p");
    // stderr is a pipe here, as in a log or a batch job: the fit's progress must still be shown.
    let t = ok(Command::new(srcache_bin()).arg("cache").arg("--hr").arg(&hr).arg("--out").arg(&out).args([
        "--scale",
        "2",
        "--patch",
        "32",
        "--expert",
        "lan=builtin:lanczos3",
        "--feat-pca",
        "2",
    ]));
    assert!(t.contains("fitting its feature PCA") && t.contains("feature PCA fit"), "{t}");
    let t = ok(Command::new(srcache_bin()).arg("inspect").arg(&out));
    let line = t.lines().find(|l| l.contains("feat/lan/pca")).unwrap_or_else(|| panic!("no basis attr:\n{t}"));
    assert!(line.contains("PCA basis: 2 of") && line.len() < 200, "{line}");
}

/// A TorchScript expert with 8x8 attention-like windows: like a traced HAT or SwinIR it accepts only sizes
/// its windows divide. Traced at 32, it passes a 192 probe, then a 75x112 image (smaller than the 192 tile,
/// so run whole) fails; with `--cache` the stack re-tiles it at the cache's patch size by itself.
#[test]
fn eval_retiles_a_window_size_expert_on_an_odd_size_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let expert = tmp.path().join("win.pt");
    let script = r#"
import sys, torch
class Win(torch.nn.Module):
    def forward(self, x):
        b, c, h, w = x.shape
        win = x.reshape(b, c, h // 8, 8, w // 8, 8).mean(dim=(3, 5), keepdim=True)
        y = (x.reshape(b, c, h // 8, 8, w // 8, 8) * 0 + win).reshape(b, c, h, w)
        return torch.nn.functional.interpolate(0.5 * x + 0.5 * y, scale_factor=2.0, mode="nearest")
torch.jit.script(Win()).save(sys.argv[1])
"#;
    // torch.jit.script reads the class's source, so the script is a file, not `python -c`.
    let py = tmp.path().join("make_win.py");
    std::fs::write(&py, script).expect("script");
    ok(Command::new(venv_python()).arg(&py).arg(&expert));
    let hr = tmp.path().join("train");
    std::fs::create_dir_all(&hr).expect("mkdir");
    std::fs::copy(photos_dir().join("chelsea.png"), hr.join("chelsea.png")).expect("copy");
    let cache = tmp.path().join("c");
    ok(Command::new(srcache_bin())
        .arg("cache")
        .arg("--hr")
        .arg(&hr)
        .arg("--out")
        .arg(&cache)
        .args(["--scale", "2", "--patch", "32", "-q", "--expert"])
        .arg(format!("win={}", expert.display())));
    // A 150x224 HR image: 75x112 LR at x2 — neither side a multiple of 8.
    let bench = tmp.path().join("odd");
    std::fs::create_dir_all(bench.join("HR")).expect("mkdir");
    let photo = image::open(photos_dir().join("coffee.png")).expect("photo").to_rgb8();
    image::imageops::crop_imm(&photo, 10, 10, 224, 150).to_image().save(bench.join("HR/odd.png")).expect("save");
    let t = ok(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--cache").arg(&cache));
    assert!(t.contains("ran in 32x32 tiles"), "{t}");
    assert!(t.lines().any(|l| l.contains("win") && l.contains("odd")), "{t}");
    // Without a cache there is no known size: the error says what to do, and does not advise the tile that failed.
    let o = run(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--expert").arg(format!("win={}", expert.display())).args(["--scale", "2"]));
    let t = text(&o);
    assert!(!t.contains("--tile 192"), "{t}");
    if !o.status.success() || t.contains("skipped") {
        assert!(t.contains("--tile N") || t.contains("--cache"), "{t}");
    }
}

/// A copied or installed binary finds a torch 2.11: beside the build (its RUNPATH's last entry), through the
/// install layout `scripts/install.sh` writes (`PREFIX/lib/srcache/torch`), and — with the build tree's torch
/// hidden in a private mount namespace, as on another machine — through that layout alone. Where it finds
/// none, it fails in one line naming the library.
#[test]
fn a_copied_or_installed_binary_finds_torch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = tmp.path().join("copied/srcache");
    std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
    std::fs::copy(srcache_bin(), &copy).expect("copy");
    let t = ok(Command::new(&copy).arg("doctor").current_dir(tmp.path()));
    assert!(t.contains("torch          2.11.0"), "{t}");

    let prefix = tmp.path().join("prefix");
    let t = ok(Command::new(workspace().join("scripts/install.sh")).arg(&prefix).arg("--python").arg(venv_python()));
    assert!(t.contains("installed"), "{t}");
    let installed = prefix.join("bin/srcache");
    assert!(ok(Command::new(&installed).arg("--version")).contains("srcache"));

    // Another machine, simulated: the build tree's torch/lib is covered by an empty tmpfs, and the install
    // layout's link points at a bind mount of the real site-packages elsewhere (libtorch_cuda finds the CUDA
    // runtime wheels through its own $ORIGIN/../../nvidia, so the whole site-packages moves, as on a real box).
    let site = std::fs::canonicalize(workspace().join(".venv/lib/python3.11/site-packages")).expect("site-packages");
    let real = site.join("torch/lib");
    let view = tmp.path().join("site-packages");
    std::fs::create_dir_all(&view).expect("mkdir");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("bin")).expect("mkdir");
    std::fs::create_dir_all(elsewhere.join("lib/srcache")).expect("mkdir");
    std::fs::copy(&installed, elsewhere.join("bin/srcache")).expect("copy");
    std::os::unix::fs::symlink(view.join("torch"), elsewhere.join("lib/srcache/torch")).expect("link");
    let script = format!(
        "set -e; mount --bind {site:?} {view:?}; mount -t tmpfs none {real:?}; {good:?} doctor; echo ==BARE==; {bare:?} doctor 2>&1 || echo \"rc=$?\"",
        good = elsewhere.join("bin/srcache"),
        bare = copy,
    );
    let o = run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let t = text(&o);
    if !o.status.success() && (t.contains("Operation not permitted") || t.contains("unshare failed") || t.contains("not found")) {
        println!("skipped: no private mount namespace here (needs root / CAP_SYS_ADMIN): {}", t.lines().next().unwrap_or_default());
        return;
    }
    let (good, bare) = t.split_once("==BARE==").unwrap_or_else(|| panic!("{t}"));
    assert!(good.contains("torch          2.11.0") && good.contains(&view.join("torch/lib").display().to_string()), "{good}");
    assert!(bare.contains("libtorch") && bare.contains("rc=127"), "{bare}");
    assert_eq!(bare.trim().lines().count(), 2, "one line, then the exit code: {bare}");
}

/// `srcache eval --cache` puts the baselines a reviewer asks for beside the experts: the expert average, the
/// best expert's ×8 self-ensemble, a least-squares blend fitted on the cache, and the oracle bound.
#[test]
fn eval_reports_the_baselines_a_fusion_model_must_beat() {
    let tmp = tempfile::tempdir().expect("tmp");
    let train = tmp.path().join("train");
    std::fs::create_dir_all(&train).expect("mkdir");
    for name in ["astronaut.png", "coffee.png"] {
        std::fs::copy(photos_dir().join(name), train.join(name)).expect("copy");
    }
    let cache = tmp.path().join("c");
    ok(Command::new(srcache_bin()).arg("cache").arg("--hr").arg(&train).arg("--out").arg(&cache).args([
        "--scale",
        "2",
        "--patch",
        "48",
        "-q",
        "--expert",
        "lan=builtin:lanczos3",
        "--expert",
        "sharp=builtin:sharp_bicubic",
    ]));
    let bench = tmp.path().join("held");
    std::fs::create_dir_all(bench.join("HR")).expect("mkdir");
    std::fs::copy(photos_dir().join("chelsea.png"), bench.join("HR/chelsea.png")).expect("copy");
    let json = tmp.path().join("t.json");
    let t = ok(Command::new(srcache_bin()).arg("eval").arg(&bench).arg("--cache").arg(&cache).arg("--json").arg(&json));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("rows");
    let psnr = |m: &str| rows.iter().find(|r| r["method"] == m).and_then(|r| r["psnr"].as_f64()).unwrap_or_else(|| panic!("no row {m}:\n{t}"));
    let (lan, sharp) = (psnr("lan"), psnr("sharp"));
    // The ensembled expert is the best on the cache's training samples (the manifest), not on the held-out image.
    let ens_row = rows.iter().filter_map(|r| r["method"].as_str()).find(|m| m.ends_with("+x8")).unwrap_or_else(|| panic!("no +x8 row:\n{t}"));
    let best = ens_row.trim_end_matches("+x8").to_string();
    let ds = Dataset::open(&cache).expect("open");
    let mean = |e: &str| ds.manifest().iter().map(|r| r.psnr[e] as f64).sum::<f64>() / ds.len() as f64;
    assert_eq!(best, if mean("lan") >= mean("sharp") { "lan" } else { "sharp" });
    let (avg, ens, blend, oracle) = (psnr("average(experts)"), psnr(ens_row), psnr("ls-blend(cache)"), psnr("oracle(bound)"));
    assert!(oracle > lan.max(sharp) + 0.1, "the per-pixel oracle bounds every expert: {t}");
    assert!(blend >= lan.min(sharp) && avg >= lan.min(sharp) - 0.05, "{t}");
    // The built-ins are symmetric filters: their 8 transformed runs agree, so the ensemble equals the expert.
    assert!((ens - psnr(&best)).abs() < 0.02, "{t}");
    assert!(t.contains("least squares on"), "the fitted blend is printed: {t}");
}
