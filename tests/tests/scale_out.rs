//! Scale-out on the real binary: `cache --part K/N` into OUT/parts, `merge`, and the merged root read by every
//! command as one dataset, equal sample for sample to a single-process run (N = 3); the bad inputs of a
//! partitioned run (bad part specs, a missing, unfinished, foreign or truncated part) refused with the part
//! named and nothing changed; a crashed part resumes only itself.

use std::path::Path;
use std::process::{Command, Output};

use srcache_tests::{photos_dir, srcache_bin};

fn srcache(args: &[&str]) -> Output {
    Command::new(srcache_bin()).args(args).output().expect("run srcache")
}

fn ok(args: &[&str]) -> String {
    let o = srcache(args);
    assert!(o.status.success(), "srcache {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str], needle: &str) -> String {
    let o = srcache(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "srcache {args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "srcache {args:?}: exit {:?} (a panic?):\n{err}", o.status.code());
    assert!(err.contains(needle), "srcache {args:?}: stderr lacks {needle:?}:\n{err}");
    err
}

/// `srcache cache` over the shipped photos with two built-in experts; `extra` adds flags.
fn cache_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let photos: &'static str = Box::leak(photos_dir().to_string_lossy().into_owned().into_boxed_str());
    let mut v = vec!["cache", "--hr", photos, "--scale", "4", "--patch", "24", "--stride", "24", "--out", out, "--quiet"];
    v.extend(["--expert", "bicubic=builtin:bicubic", "--expert", "lanczos=builtin:lanczos3", "--shard-mb", "1"]);
    v.extend(extra);
    v
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

#[test]
fn three_parts_merge_into_the_single_process_dataset() {
    let tmp = tempfile::tempdir().expect("tmp");
    let reference = tmp.path().join("ref");
    let out = tmp.path().join("out");
    ok(&cache_args(p(&reference), &[]));
    for k in 0..3 {
        let part = format!("{k}/3");
        let s = ok(&cache_args(p(&out), &["--part", &part]));
        assert!(s.contains("written"), "{s}");
    }
    // Parts are balanced by pixels: none is empty, and each is a complete dataset of its own.
    for k in 0..3 {
        let dir = out.join(format!("parts/{k}-of-3"));
        ok(&["verify", p(&dir), "--quiet"]);
    }
    let merged = ok(&["merge", p(&out)]);
    assert!(merged.contains("merged 3 parts"), "{merged}");
    let manifest = std::fs::read(out.join("manifest.parquet")).expect("manifest");
    ok(&["merge", p(&out)]);
    assert_eq!(std::fs::read(out.join("manifest.parquet")).expect("manifest"), manifest, "merge is not idempotent");
    // Same ids, same tensor bytes, same rows apart from shard paths.
    let same = ok(&["diff", p(&reference), p(&out)]);
    assert!(same.contains("same:"), "{same}");
    // Every reading command takes the merged root as one dataset.
    let v = ok(&["verify", p(&out)]);
    assert!(v.contains("0 problem(s)") && v.contains("shard(s)"), "{v}");
    let i = ok(&["inspect", p(&out), "--json"]);
    let j: serde_json::Value = serde_json::from_str(&i).expect("inspect json");
    let n_ref: serde_json::Value = serde_json::from_str(&ok(&["inspect", p(&reference), "--json"])).expect("json");
    assert_eq!(j["samples"], n_ref["samples"]);
    ok(&["stats", p(&out), "--samples", "4"]);
    let csv = tmp.path().join("ids.csv");
    ok(&["export", p(&out), "--manifest-csv", p(&csv)]);
    let ids = std::fs::read_to_string(&csv).expect("csv");
    let last_id = ids.lines().last().and_then(|l| l.split(',').next()).expect("an id").to_string();
    ok(&["dump", p(&out), "--sample", &last_id, "--out", p(&tmp.path().join("sheet.png"))]);
    ok(&["export", p(&out), "--sample", &last_id, "--out", p(&tmp.path().join("s.npz"))]);
    let run = tmp.path().join("run");
    let cfg = tmp.path().join("train.toml");
    std::fs::write(&cfg, "steps = 3\nval_every = 3\nckpt_every = 3\nlog_every = 1\nexport = false\n[model]\nwidth = 8\nblocks = 1\n[loader]\nbatch_size = 2\ncrop = 12\n")
        .expect("config");
    let t = ok(&["train", "--data", p(&out), "--out", p(&run), "--config", p(&cfg), "--device", "cpu"]);
    assert!(t.contains("3 steps"), "{t}");
}

#[test]
fn bad_parts_are_refused_with_the_part_named_and_nothing_changed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let o = p(&out);
    fails(&cache_args(o, &["--part", "3/2"]), "0 <= K < N");
    fails(&cache_args(o, &["--part", "0/0"]), "0 <= K < N");
    fails(&cache_args(o, &["--part", "one/3"]), "K/N");
    let no_env = Command::new(srcache_bin())
        .args(cache_args(o, &["--part", "slurm"]))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("run");
    assert!(!no_env.status.success() && String::from_utf8_lossy(&no_env.stderr).contains("SLURM_ARRAY_TASK_ID"));
    fails(&["merge", o], "no parts/");

    ok(&cache_args(o, &["--part", "0/3"]));
    ok(&cache_args(o, &["--part", "2/3"]));
    fails(&["merge", o], "1-of-3: missing");
    assert!(!out.join("manifest.parquet").exists(), "a refused merge wrote a manifest");

    // A part made with other experts (another dataset's folder dropped in) is refused by name.
    let other = tmp.path().join("other");
    let photos = photos_dir();
    let mut foreign = vec!["cache", "--hr", p(&photos), "--scale", "4", "--patch", "24", "--stride", "24", "--out", p(&other), "--quiet"];
    foreign.extend(["--expert", "bicubic=builtin:bicubic", "--expert", "lanczos=builtin:sharp_bicubic", "--shard-mb", "1", "--part", "1/3"]);
    ok(&foreign);
    std::fs::rename(other.join("parts/1-of-3"), out.join("parts/1-of-3")).expect("move part");
    fails(&["merge", o], "1-of-3: made with a different config");
    std::fs::remove_dir_all(out.join("parts/1-of-3")).expect("rm");
    ok(&cache_args(o, &["--part", "1/3"]));
    ok(&["merge", o]);
    let good = std::fs::read(out.join("manifest.parquet")).expect("manifest");

    // Unfinished part: no done marker.
    let done = out.join("parts/2-of-3/cache.done.json");
    let saved = std::fs::read(&done).expect("done");
    std::fs::remove_file(&done).expect("rm done");
    fails(&["merge", o], "2-of-3: unfinished");
    std::fs::write(&done, saved).expect("restore");
    // Truncated part manifest.
    let pm = out.join("parts/0-of-3/manifest.parquet");
    let bytes = std::fs::read(&pm).expect("part manifest");
    std::fs::write(&pm, &bytes[..bytes.len() / 2]).expect("truncate");
    fails(&["merge", o], "0-of-3");
    assert_eq!(std::fs::read(out.join("manifest.parquet")).expect("manifest"), good, "a refused merge changed the merged manifest");
    std::fs::write(&pm, &bytes).expect("restore");
    ok(&["merge", o]);
    // Parts of different splits do not mix.
    ok(&cache_args(o, &["--part", "0/2"]));
    fails(&["merge", o], "parts of different splits");
}

#[test]
fn a_killed_part_resumes_only_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let o = p(&out);
    ok(&cache_args(o, &["--part", "0/3"]));
    let part0 = std::fs::read(out.join("parts/0-of-3/shard-00000.srs")).expect("shard");
    // Kill part 1 once its first shard exists, then rerun it.
    let mut child = Command::new(srcache_bin()).args(cache_args(o, &["--part", "1/3", "--batch", "2"])).spawn().expect("spawn");
    let first = out.join("parts/1-of-3/shard-00000.srs");
    let t0 = std::time::Instant::now();
    while !first.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let s = ok(&cache_args(o, &["--part", "1/3"]));
    assert!(s.contains("written") || s.contains("already complete"), "{s}");
    assert_eq!(std::fs::read(out.join("parts/0-of-3/shard-00000.srs")).expect("shard"), part0, "part 0 was touched");
    ok(&cache_args(o, &["--part", "2/3"]));
    ok(&["merge", o]);
    let reference = tmp.path().join("ref");
    ok(&cache_args(p(&reference), &[]));
    ok(&["diff", p(&reference), o]);
}
