//! Issue #15, past ingest: `srcache cache` and `srcache train` over hostile folders, markers and configs, with
//! the real binary. Every refusal is one `error: ` line naming the file or folder and the reason (exit 1), and
//! leaves what was there byte for byte; every skip is reported; a worker fault ends the whole run with its
//! error, never a short successful one. Each test ends with `<suite>: N cases, 0 panics, 0 hangs`.

mod ingest_common;
mod reliability_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingest_common::{assert_same_dataset, s, samples, skipped, small_photos};
use reliability_common::{cache_args, error_rule, refs, small_cache, train_toml, Tally};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every file under `dir` (relative path -> bytes), to show a refused command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("list").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).expect("under root").to_path_buf(), std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs `args`, expecting a refusal that follows the error rule, names one of `names` and holds `needle`.
fn refused(t: &mut Tally, label: &str, args: &[&str], env: &[(&str, &str)], names: &[&str], needle: &str) {
    if let Some(r) = t.run(label, args, env, TIMEOUT) {
        let outcome = error_rule(&r, names).and_then(|()| match r.stderr.contains(needle) {
            true => Ok(()),
            false => Err(format!("the error does not say {needle:?}")),
        });
        t.check(label, &r, outcome);
    }
}

/// Runs `args`, expecting exit 0; returns stdout + stderr.
fn succeeds(t: &mut Tally, label: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let Some(r) = t.run(label, args, env, TIMEOUT) else { return String::new() };
    let outcome = match r.code() {
        Some(0) => Ok(()),
        c => Err(format!("exit {c:?}, want 0")),
    };
    t.check(label, &r, outcome);
    format!("{}{}", r.stdout, r.stderr)
}

#[test]
fn cache_refuses_foreign_outputs_believes_no_stale_marker_and_reports_skips_and_faults() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();

    // An output folder holding the user's files (a `.tmp` among them): refused by name, with and without
    // --force, and every file left as it was.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("projects")).expect("mkdir");
    for (name, text) in [("notes.tmp", "draft"), ("todo.txt", "x"), ("projects/plan.md", "y"), ("shard-notes.srs.bak", "z")] {
        std::fs::write(home.join(name), text).expect("write");
    }
    let before = snapshot(&home);
    let hr = tmp.path().join("hr");
    small_photos(&hr, 50, 64);
    for (label, extra) in [("cache into a user folder", vec![]), ("cache --force into a user folder", vec!["--force"])] {
        let args = cache_args(&hr, &home, 16, &extra);
        refused(&mut t, label, &refs(&args), &[], &[s(&home)], "srcache did not write");
        assert_eq!(snapshot(&home), before, "{label}: the user's files changed");
    }

    // A patch no image holds: a sentence (not an out-of-memory trace) and no folder left behind; the corrected
    // command then runs in the same place.
    let out = tmp.path().join("cache");
    for patch in [48, 10_000] {
        let args = cache_args(&hr, &out, patch, &[]);
        refused(&mut t, &format!("cache --patch {patch}"), &refs(&args), &[], &[&format!("patch {patch}")], "larger than every input image");
        assert!(!out.exists(), "a refused patch size left {}", out.display());
    }

    // A 1x1 image among 50 photos: skipped, named on stderr and in the manifest, the 50 cached (4 samples each).
    image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9])).save(hr.join("tiny.png")).expect("tiny");
    let args = cache_args(&hr, &out, 16, &[]);
    let text = succeeds(&mut t, "cache over 50 photos and a 1x1", &refs(&args), &[]);
    assert!(text.contains("tiny.png"), "the skip is not reported:\n{text}");
    assert_eq!(samples(&out), 200);
    let listed = skipped(&out);
    assert!(listed.len() == 1 && listed[0].path.ends_with("tiny.png"), "skipped list: {listed:?}");

    // A worker panic on one file (injected) ends the run with that file named, exit 1, no completion marker;
    // the same command without the fault then finishes to exactly the uninterrupted cache.
    let faulty = tmp.path().join("faulty");
    let args = cache_args(&hr, &faulty, 16, &["--batch", "4"]);
    let hook = [(srcache_ingest::FAULT_PANIC_ENV, "030")];
    // (The worker's panic message is printed, as a bug report, so this run is not counted as a finding.)
    let r = ingest_common::srcache_env(&refs(&args), &hook, TIMEOUT);
    t.cases += 1;
    let ok = r.code() == Some(1) && r.stderr.lines().any(|l| l.starts_with("error: ") && l.contains("030.png"));
    t.check("cache with a panicking worker", &r, if ok { Ok(()) } else { Err("want exit 1 naming 030.png".into()) });
    assert!(!faulty.join(srcache_cache::DONE_FILE).exists(), "a failed run wrote {}", srcache_cache::DONE_FILE);
    succeeds(&mut t, "cache rerun after the fault", &refs(&args), &[]);
    assert!(samples(&faulty) == 200, "the rerun after a fault is short");
    for f in ["manifest.parquet", "shard-00000.srs", "inputs.json"] {
        assert_eq!(std::fs::read(out.join(f)).ok(), std::fs::read(faulty.join(f)).ok(), "{f}: resumed cache differs from the clean one");
    }

    // A completion marker over a deleted shard is not "already complete": refused by name, then --force rebuilds.
    let small = small_cache(tmp.path(), "small", 3);
    std::fs::remove_file(small.join("shard-00000.srs")).expect("rm shard");
    let hr_small = tmp.path().join("small-hr");
    let args = cache_args(&hr_small, &small, 16, &["--shard-mb", "1"]);
    refused(&mut t, "cache over a marker without its shard", &refs(&args), &[], &[s(&small)], srcache_cache::DONE_FILE);
    let args = cache_args(&hr_small, &small, 16, &["--shard-mb", "1", "--force"]);
    succeeds(&mut t, "cache --force over the damaged cache", &refs(&args), &[]);
    succeeds(&mut t, "verify the rebuilt cache", &["verify", s(&small)], &[]);

    // A failed first run (a missing expert file) leaves records but no sample: the corrected command starts
    // afresh instead of being refused as "a different config".
    let fresh = tmp.path().join("fresh");
    let mut args = cache_args(&hr_small, &fresh, 16, &["--expert", "ghost=missing.pt"]);
    refused(&mut t, "cache with a missing expert file", &refs(&args), &[], &["missing.pt"], "missing.pt");
    args.truncate(args.len() - 2);
    succeeds(&mut t, "cache after fixing the expert", &refs(&args), &[]);
    let reference = tmp.path().join("reference");
    let args = cache_args(&hr_small, &reference, 16, &[]);
    succeeds(&mut t, "reference cache", &refs(&args), &[]);
    for f in ["manifest.parquet", "shard-00000.srs"] {
        assert_eq!(std::fs::read(reference.join(f)).ok(), std::fs::read(fresh.join(f)).ok(), "{f}: a restarted cache differs");
    }
    t.finish("hostile cache");
}

#[test]
fn train_refuses_bad_devices_typos_existing_runs_and_tampered_manifests() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let data = small_cache(tmp.path(), "data", 4);
    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, train_toml(4, 2)).expect("toml");
    let run = tmp.path().join("run");
    let train = |run: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["train", "--data", s(&data), "--out", s(run), "--config", s(&cfg)].map(String::from).to_vec();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };

    // Devices that do not exist or are not devices: refused before anything is written.
    for (dev, needle) in
        [("cuda:7", "cuda:7"), ("gpu", "not a device"), ("cuda:abc", "not a device index"), ("cuda:-1", "cuda:-1"), ("tpu:0", "not a device")]
    {
        let dir = tmp.path().join(format!("run-{}", dev.replace(':', "-")));
        let args = train(&dir, &["--device", dev]);
        let label = format!("train --device {dev}");
        if dev == "cuda:7" && tch::Cuda::device_count() > 7 {
            println!("skipped: {label}: this machine has 8 CUDA devices");
            continue;
        }
        refused(&mut t, &label, &refs(&args), &[], &[dev], needle);
        assert!(!dir.exists(), "{label} created {}", dir.display());
    }

    // Typos in the training config are errors naming the key and the file, never silently dropped.
    for (key, text) in [("learning_rate", "learning_rate = 0.1\n"), ("batchsize", "[loader]\nbatchsize = 8\n"), ("stepz", "stepz = 3\n")] {
        let bad = tmp.path().join(format!("{key}.toml"));
        std::fs::write(&bad, text).expect("toml");
        let dir = tmp.path().join(format!("run-{key}"));
        let args = ["train", "--data", s(&data), "--out", s(&dir), "--config", s(&bad)];
        refused(&mut t, &format!("train with `{key}`"), &args, &[], &[s(&bad)], key);
    }

    // A finished run is not overwritten without --resume: refused, every file unchanged.
    succeeds(&mut t, "train", &refs(&train(&run, &[])), &[]);
    let before = snapshot(&run);
    refused(&mut t, "train into an existing run", &refs(&train(&run, &[])), &[], &[s(&run)], "--resume");
    refused(&mut t, "train into an existing run, other steps", &refs(&train(&run, &["--steps", "9"])), &[], &[s(&run)], "--resume");
    assert_eq!(snapshot(&run), before, "a refused train changed the run");

    // A manifest that does not match its shards (a forged id, a row pointing past its shard) is refused by
    // train as it is by verify: never trained on.
    let manifest = srcache_formats::Manifest::path_in(&data);
    let rows = srcache_formats::Manifest::read(&manifest).expect("manifest");
    let meta = srcache_formats::Manifest::read_metadata(&manifest).expect("metadata");
    for (what, edit) in [
        ("a forged id", Box::new(|r: &mut Vec<srcache_formats::ManifestRow>| r[1].sample_id = "forged_0_0".into()) as Box<dyn Fn(&mut _)>),
        ("an index past its shard", Box::new(|r: &mut Vec<srcache_formats::ManifestRow>| r[0].index = 999)),
        ("a dropped row", Box::new(|r: &mut Vec<srcache_formats::ManifestRow>| drop(r.remove(2)))),
    ] {
        let mut forged = rows.clone();
        edit(&mut forged);
        srcache_formats::Manifest::write_with_metadata(&manifest, &forged, &meta).expect("forge manifest");
        refused(&mut t, &format!("verify over {what}"), &["verify", s(&data)], &[], &[s(&data)], "problem(s) found");
        let dir = tmp.path().join(format!("run-forged-{}", what.replace(' ', "-")));
        refused(&mut t, &format!("train over {what}"), &refs(&train(&dir, &[])), &[], &[s(&data)], "manifest");
        assert!(!dir.join("ckpt").exists(), "train over {what} wrote checkpoints");
    }
    srcache_formats::Manifest::write_with_metadata(&manifest, &rows, &meta).expect("restore manifest");
    succeeds(&mut t, "verify the restored manifest", &["verify", s(&data)], &[]);
    let again = tmp.path().join("run-again");
    succeeds(&mut t, "train after the restore", &refs(&train(&again, &[])), &[]);
    assert_same_dataset(&run.join("ckpt/step-00000004"), &again.join("ckpt/step-00000004"), "train before and after the forgeries");
    t.finish("hostile train");
}
