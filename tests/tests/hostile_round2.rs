//! Issue #25, reliability round 2, cache / train / readers: `--force` beside a running cache, a user's `parts`,
//! parts copied over each other, FIFOs where files belong, experts that break their output contract or return
//! NaN, every training-config number out of range, refused resumes that must change nothing, and a resume on
//! another dataset. The real binary, real photos, built-in experts and tiny TorchScript experts written here.
//! Each test ends with `<suite>: N cases, 0 panics, 0 hangs` (BENCHMARKS.md, "Reliability").

mod ingest_common;
mod reliability_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ingest_common::{s, samples, small_photos};
use reliability_common::{cache_args, lock_held, refs, refused, small_cache, spawn, succeeds, train_toml, Tally};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every file under `dir` (relative path -> bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("list").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.strip_prefix(root).expect("under root").to_path_buf(), b"<dir>".to_vec());
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).expect("under root").to_path_buf(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits until `lock` is held (true) or `child` exits first (false).
fn wait_for_lock(child: &mut Child, lock: &Path) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !lock_held(lock) {
        if child.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Waits until `path` exists (true) or `child` exits first (false).
fn wait_for_file(child: &mut Child, path: &Path) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        if child.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn cache_force_beside_a_running_cache_user_parts_copied_parts_and_config_ranges() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let hr = tmp.path().join("hr");
    small_photos(&hr, 120, 96);

    // D1: `--force` while another cache writes the same --out is refused before it touches anything; the first
    // run finishes, complete and verifiable.
    let out = tmp.path().join("busy");
    let args = cache_args(&hr, &out, 16, &["--batch", "2"]);
    let mut first = spawn(&args, &tmp.path().join("first.err"));
    // Its lock held and its records written: from here on it is a running cache with files to lose.
    if wait_for_lock(&mut first, &out.join(srcache_cache::LOCK_FILE)) && wait_for_file(&mut first, &out.join(srcache_cache::INPUTS_FILE)) {
        let before = snapshot(&out);
        let mut forced = args.clone();
        forced.push("--force".into());
        refused(&mut t, "cache --force beside a running cache", &refs(&forced), &[s(&out)], "another srcache process");
        let still_running = first.try_wait().expect("wait").is_none();
        if still_running {
            for f in [srcache_cache::LOCK_FILE, srcache_cache::CONFIG_FILE, srcache_cache::INPUTS_FILE] {
                assert_eq!(before.get(Path::new(f)), snapshot(&out).get(Path::new(f)), "{f} changed under the running cache");
            }
        } else {
            println!("skipped: the check that --force left the running cache's files alone (the first run ended first)");
        }
    } else {
        println!("skipped: --force beside a running cache (the first run ended before its lock could be seen)");
    }
    let status = first.wait().expect("wait");
    let err = std::fs::read_to_string(tmp.path().join("first.err")).unwrap_or_default();
    assert!(status.success(), "the first cache failed beside the refused --force: {err}");
    succeeds(&mut t, "verify the first cache", &["verify", s(&out)], &[]);
    // 96x96 HR at x2: 48x48 LR, nine 16x16 patches an image.
    assert_eq!(samples(&out), 120 * 9, "the first cache is short");

    // D12: a user's file or folder named `parts` in a cache folder: `--force` refuses, deleting nothing.
    let small_hr = tmp.path().join("small-hr");
    small_photos(&small_hr, 3, 64);
    for (what, make) in [
        ("a file", Box::new(|p: &Path| std::fs::write(p, "my notes").expect("write")) as Box<dyn Fn(&Path)>),
        (
            "a folder",
            Box::new(|p: &Path| {
                std::fs::create_dir_all(p).expect("mkdir");
                std::fs::write(p.join("plan.txt"), "mine").expect("write");
            }),
        ),
    ] {
        let dir = tmp.path().join(format!("parts-{}", what.replace(' ', "-")));
        let args = cache_args(&small_hr, &dir, 16, &[]);
        succeeds(&mut t, &format!("cache before {what} named parts"), &refs(&args), &[]);
        make(&dir.join("parts"));
        let before = snapshot(&dir);
        let mut forced = args.clone();
        forced.push("--force".into());
        refused(&mut t, &format!("cache --force over {what} named parts"), &refs(&forced), &["parts"], "not removing anything");
        assert_eq!(snapshot(&dir), before, "cache --force over {what} named parts changed the folder");
    }

    // D16: a part copied over another (its shards and manifest) repeats every sample id: merge refuses.
    let parted = tmp.path().join("parted");
    let four = tmp.path().join("four-hr");
    small_photos(&four, 4, 64);
    for k in 0..2 {
        let args = cache_args(&four, &parted, 16, &["--part", &format!("{k}/2")]);
        succeeds(&mut t, &format!("cache --part {k}/2"), &refs(&args), &[]);
    }
    let (p0, p1) = (parted.join("parts/0-of-2"), parted.join("parts/1-of-2"));
    for f in ["shard-00000.srs", "manifest.parquet"] {
        std::fs::copy(p0.join(f), p1.join(f)).expect("copy part");
    }
    refused(&mut t, "merge over a part copied onto another", &["merge", s(&parted)], &["1-of-2"], "0-of-2 holds too");
    assert!(!parted.join("manifest.parquet").exists(), "a refused merge wrote a manifest");

    // D22 and the config ranges: nothing to do, or numbers no run can honour, are a sentence before any work.
    let none = tmp.path().join("limit0");
    refused(&mut t, "cache --limit 0", &refs(&cache_args(&small_hr, &none, 16, &["--limit", "0"])), &["limit 0"], "nothing to do");
    refused(&mut t, "cache --batch 10^7", &refs(&cache_args(&small_hr, &none, 16, &["--batch", "10000000"])), &["batch"], "outside");
    for (key, line) in [("workers", "workers = 100000"), ("compress_workers", "compress_workers = 100000")] {
        let toml = tmp.path().join(format!("{key}.toml"));
        let (top, input) = if key == "workers" { (String::new(), format!("{line}\n")) } else { (format!("{line}\n"), String::new()) };
        std::fs::write(&toml, format!("{top}[input]\nscale = 2\npatch = 16\n{input}")).expect("toml");
        let mut args = cache_args(&small_hr, &none, 16, &[]);
        args.extend(["--config".into(), s(&toml).into()]);
        refused(&mut t, &format!("cache with {line}"), &refs(&args), &[key], "outside");
    }
    assert!(!none.exists(), "a refused cache made {}", none.display());
    t.finish("hostile round 2: cache");
}

#[test]
fn fifos_where_shards_manifests_and_configs_belong_are_refused_not_waited_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, train_toml(2, 2)).expect("toml");
    for victim in ["shard-00000.srs", "manifest.parquet"] {
        let data = small_cache(tmp.path(), &format!("data-{}", victim.replace('.', "-")), 3);
        std::fs::remove_file(data.join(victim)).expect("rm");
        mkfifo(&data.join(victim));
        let named = data.join(victim);
        refused(&mut t, &format!("verify over a FIFO {victim}"), &["verify", s(&data)], &[s(&data)], "");
        let run = tmp.path().join(format!("run-{victim}"));
        let args = ["train", "--data", s(&data), "--out", s(&run), "--config", s(&cfg)];
        refused(&mut t, &format!("train over a FIFO {victim}"), &args, &[s(&named)], "FIFO");
        refused(&mut t, &format!("inspect a FIFO {victim}"), &["inspect", s(&named)], &[s(&named)], "");
        refused(&mut t, &format!("stats over a FIFO {victim}"), &["stats", s(&data)], &[s(&data)], "");
    }
    // A FIFO as the training or cache config.
    let data = small_cache(tmp.path(), "data", 3);
    let fifo = tmp.path().join("fifo.toml");
    mkfifo(&fifo);
    let run = tmp.path().join("run-fifo-config");
    refused(&mut t, "train --config FIFO", &["train", "--data", s(&data), "--out", s(&run), "--config", s(&fifo)], &[s(&fifo)], "FIFO");
    let mut args = cache_args(&tmp.path().join("data-hr"), &tmp.path().join("c"), 16, &[]);
    args.extend(["--config".into(), s(&fifo).into()]);
    refused(&mut t, "cache --config FIFO", &refs(&args), &[s(&fifo)], "FIFO");
    t.finish("hostile round 2: non-regular files");
}

/// TorchScript experts that break the contract, written by the project's venv Python into `dir`: name -> file.
fn bad_experts(dir: &Path) -> Option<BTreeMap<&'static str, PathBuf>> {
    let py = srcache_tests::workspace().join(".venv/bin/python");
    if !py.exists() {
        println!("skipped: bad TorchScript experts: {} is missing (scripts/setup.sh makes it)", py.display());
        return None;
    }
    let script = r#"
import sys, torch
import torch.nn.functional as F
out = sys.argv[1]

# Per sample: only the all-white samples of a batch (an LR of exactly 1.0, which the probe input never is).
class NanOnWhite(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        white = (x.flatten(1).amin(1) >= 1.0).view(-1, 1, 1, 1)
        return torch.where(white, torch.full_like(y, float("nan")), y)

class InfFeatOnWhite(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        white = (x.flatten(1).amin(1) >= 1.0).view(-1, 1, 1, 1)
        f = torch.where(white, torch.full_like(x, float("inf")), x * 2.0)
        return y, f

class NanAlways(torch.nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2.0, mode="nearest") * float("nan")

class Feat5d(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return y, y.unsqueeze(1)

class Feat1d(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return y, y.flatten()

class FeatAspect(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return y, y[:, :, :, : y.shape[3] // 2]

class SrU8(torch.nn.Module):
    def forward(self, x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return (y * 255.0).to(torch.uint8)

for name, m in [("nan_white", NanOnWhite()), ("inf_feat", InfFeatOnWhite()), ("nan_always", NanAlways()), ("feat5d", Feat5d()),
                ("feat1d", Feat1d()), ("feat_aspect", FeatAspect()), ("sr_u8", SrU8())]:
    torch.jit.script(m).save(f"{out}/{name}.pt")
"#;
    std::fs::create_dir_all(dir).expect("mkdir");
    // From a file: TorchScript compiles a module from its class's source, which `python -c` does not keep.
    let file = dir.join("make_bad_experts.py");
    std::fs::write(&file, script).expect("script");
    let status = Command::new(&py).arg(&file).arg(dir).status().expect("python");
    assert!(status.success(), "writing the bad experts failed");
    let names = ["nan_white", "inf_feat", "nan_always", "feat5d", "feat1d", "feat_aspect", "sr_u8"];
    Some(names.into_iter().map(|n| (n, dir.join(format!("{n}.pt")))).collect())
}

#[test]
fn experts_breaking_their_output_contract_or_returning_nan_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let Some(experts) = bad_experts(&tmp.path().join("experts")) else { return };
    let hr = tmp.path().join("hr");
    small_photos(&hr, 3, 64);
    // A white image: its LR is exactly 1.0 everywhere, which the probe input never is.
    image::RgbImage::from_pixel(64, 64, image::Rgb([255, 255, 255])).save(hr.join("white.png")).expect("white");
    let base = |out: &Path, name: &str, path: &Path| -> Vec<String> {
        let mut v: Vec<String> = ["cache", "--hr", s(&hr), "--out", s(out), "--scale", "2", "--patch", "16", "--quiet"].map(String::from).to_vec();
        v.extend(["--expert".to_string(), format!("{name}={}", path.display())]);
        v
    };
    // At the probe, before any work: the contract (shape, dtype, aspect) and finiteness.
    for (name, needle) in [
        ("feat5d", "feat has shape"),
        ("feat1d", "feat has shape"),
        ("feat_aspect", "aspect"),
        ("sr_u8", "floating-point"),
        ("nan_always", "NaN or infinite"),
    ] {
        let out = tmp.path().join(format!("out-{name}"));
        refused(&mut t, &format!("cache with expert {name}"), &refs(&base(&out, name, &experts[name])), &[name], needle);
        assert!(!out.join(srcache_cache::DONE_FILE).exists() && !out.join("manifest.parquet").exists(), "{name}: a refused run left a cache");
    }
    // Per batch: the one sample whose outputs are not finite is named with its expert; nothing is marked done.
    for name in ["nan_white", "inf_feat"] {
        let out = tmp.path().join(format!("out-{name}"));
        refused(&mut t, &format!("cache with expert {name} over a white image"), &refs(&base(&out, name, &experts[name])), &["white_"], name);
        assert!(!out.join(srcache_cache::DONE_FILE).exists(), "{name}: NaN outputs were marked complete");
    }
    t.finish("hostile round 2: experts");
}

#[test]
fn train_refuses_out_of_range_numbers_and_refused_resumes_change_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let data = small_cache(tmp.path(), "data", 4);
    // D7, D8, D9: every number out of range is refused naming the file and the key; no run directory appears.
    let base = train_toml(4, 2);
    let optim = |line: &str| base.replace("[optim]\n", &format!("[optim]\n{line}\n"));
    let cases: Vec<(&str, String)> = vec![
        ("loader.workers", base.replace("workers = 1\n", "workers = 100000\n")),
        ("model.width", base.replace("width = 8", "width = 0")),
        ("threads", base.replace("threads = 1", "threads = 0")),
        ("optim.lr", optim("lr = nan")),
        ("optim.lr", optim("lr = inf")),
        ("optim.lr", optim("lr = -1.0")),
        ("optim.ema_decay", optim("ema_decay = 2.0")),
        ("optim.eps", optim("eps = 0.0")),
        ("optim.betas[0]", optim("betas = [1.5, 0.99]")),
        ("optim.grad_accum", optim("grad_accum = 0")),
        ("optim.clip_grad_norm", optim("clip_grad_norm = -1.0")),
        ("val_fraction", format!("val_fraction = 1.0\n{base}")),
        ("val_fraction", format!("val_fraction = -0.5\n{base}")),
        ("val_fraction", format!("val_fraction = nan\n{base}")),
        ("loader.batch_size", base.replace("batch_size = 2", "batch_size = 0")),
        ("loss.weights", format!("{base}[loss.weights]\ncharbonnier = 0.0\n")),
    ];
    for (i, (key, text)) in cases.iter().enumerate() {
        assert_ne!(text, &base, "case {i} ({key}) changed nothing");
        let file = tmp.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).expect("toml");
        let run = tmp.path().join(format!("run-bad-{i}"));
        let label = format!("train with {key} out of range (case {i})");
        refused(&mut t, &label, &["train", "--data", s(&data), "--out", s(&run), "--config", s(&file)], &[s(&file)], key);
        assert!(!run.exists(), "{label} created the run directory");
    }

    // D10: a failed first start (a val_dirs folder that is not there) leaves nothing that refuses the fix.
    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, train_toml(4, 2)).expect("toml");
    let run = tmp.path().join("run");
    let bad_val = tmp.path().join("bad-val.toml");
    std::fs::write(&bad_val, format!("val_dirs = [\"{}\"]\n{}", tmp.path().join("no-such-benchmark").display(), train_toml(4, 2))).expect("toml");
    // (Only the exit and the name are checked: that message names the folder twice, in its cause too.)
    let label = "train with a missing val_dirs folder";
    if let Some(r) = t.run(label, &["train", "--data", s(&data), "--out", s(&run), "--config", s(&bad_val)], &[], TIMEOUT) {
        let ok = r.code() == Some(1) && r.stderr.contains("no-such-benchmark");
        t.check(label, &r, if ok { Ok(()) } else { Err("want exit 1 naming the missing folder".into()) });
    }
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["train", "--data", s(&data), "--out", s(&run), "--config", s(&cfg)].map(String::from).to_vec();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    succeeds(&mut t, "train after fixing val_dirs", &refs(&train(&[])), &[]);

    // Refused resumes change nothing: fewer steps than done, another model, another dataset.
    let before = snapshot(&run);
    refused(&mut t, "train --resume --steps 2 on a run at step 4", &refs(&train(&["--resume", "--steps", "2"])), &[s(&run)], "at step 4");
    let wide = tmp.path().join("wide.toml");
    std::fs::write(&wide, train_toml(4, 2).replace("width = 8", "width = 16")).expect("toml");
    let args = ["train", "--data", s(&data), "--out", s(&run), "--config", s(&wide), "--resume", "--steps", "6"];
    refused(&mut t, "train --resume with another model width", &args, &[], "model config differs");
    let other = small_cache(tmp.path(), "other", 5);
    let args = ["train", "--data", s(&other), "--out", s(&run), "--config", s(&cfg), "--resume", "--steps", "6"];
    refused(&mut t, "train --resume on another dataset", &args, &[s(&run)], "another dataset");
    assert_eq!(snapshot(&run), before, "a refused resume changed the run");
    succeeds(&mut t, "train --resume on its own dataset", &refs(&train(&["--resume", "--steps", "6"])), &[]);
    t.finish("hostile round 2: train");
}
