//! Issue #15, cache and train: the real binary killed with SIGKILL at seeded points, then rerun with the same
//! command (`train` with `--resume`), must end exactly where an uninterrupted run ends, byte for byte: the
//! cache's shards, manifest and input list; the run's final checkpoint, exported model and loss curve.
//!
//! A kill point is (k, delay): wait until the run has made k units of progress (complete shards for `cache`,
//! checkpoints for `train`), then sleep `delay`, a fraction of one unit's time, then SIGKILL; k = 0 is a time
//! offset anywhere in an uninterrupted run (its start included). Points come from a seeded generator
//! (`SRCACHE_KILL_SEED`, default 15); `SRCACHE_KILL_POINTS` sets how many per command (default 6; with
//! `kill_ingest`'s 12 that is 24 in CI). A run that finished before its kill does not count. Each test ends
//! with `kill <command>: N kills, N survived`.

mod ingest_common;
mod reliability_common;

use std::path::Path;
use std::time::{Duration, Instant};

use ingest_common::{s, small_photos, srcache};
use reliability_common::{cache_args, complete_shards, env_num, refs, run_and_kill, small_cache, train_toml, Rng};

/// The seeded kill loop shared by both commands: `points` kills of `args` into `out`, each followed by
/// `rerun` and `check` (which compares with the uninterrupted run). Prints and returns the kill count.
fn kill_loop(
    what: &str,
    args: &[String],
    out: &Path,
    progress: &dyn Fn() -> u64,
    (units, unit, full): (u64, Duration, Duration),
    rerun: &dyn Fn(),
    check: &dyn Fn(&str),
) {
    let points = env_num("SRCACHE_KILL_POINTS", 6);
    let mut rng = Rng(env_num("SRCACHE_KILL_SEED", 15) ^ units);
    let (mut kills, mut tries) = (0u64, 0u64);
    while kills < points {
        tries += 1;
        assert!(tries < points * 6 + 20, "{what}: runs keep finishing before their kill point ({kills} kills in {tries} tries)");
        let k = rng.below(units + 1);
        let delay = match k {
            0 => Duration::from_micros(rng.below(full.as_micros() as u64)),
            _ => Duration::from_micros(rng.below(unit.as_micros().max(1) as u64)),
        };
        if !run_and_kill(args, progress, k, delay, full * 10 + Duration::from_secs(60)) {
            std::fs::remove_dir_all(out).expect("rm out");
            continue;
        }
        kills += 1;
        rerun();
        check(&format!("{what} killed at {k} + {delay:?}"));
        std::fs::remove_dir_all(out).expect("rm out");
    }
    println!("kill {what}: {kills} kills, {kills} survived ({} runs finished before their kill point)", tries - kills);
}

/// Checkpoint steps saved so far (the step `ckpt/latest` names).
fn checkpoints(run: &Path) -> u64 {
    let latest = std::fs::read_to_string(run.join("ckpt/latest")).unwrap_or_default();
    latest.trim().trim_start_matches("step-").parse().unwrap_or(0)
}

fn ok(args: &[String], what: &str) {
    let r = srcache(&refs(args));
    assert_eq!(r.code(), Some(0), "{what}: {}", r.text());
}

#[test]
fn killed_cache_reruns_to_the_uninterrupted_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    // 40 photo crops of 128x128 at x2, patch 16: 16 samples each, several 1 MB shards.
    small_photos(&hr, 40, 128);
    let args = |out: &Path| cache_args(&hr, out, 16, &["--shard-mb", "1", "--batch", "8"]);
    let reference = tmp.path().join("reference");
    let t = Instant::now();
    ok(&args(&reference), "reference cache");
    let full = t.elapsed();
    let units = complete_shards(&reference) as u64;
    assert!(units >= 4, "want a multi-shard cache, got {units} shard(s)");
    // The cache's content: everything but the lock, the timing summary and the config (which names its folder).
    let content = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let own = [srcache_cache::LOCK_FILE, srcache_cache::DONE_FILE, srcache_cache::CONFIG_FILE];
        ingest_common::dataset_files(dir).into_iter().filter(|(n, _)| !own.contains(&n.as_str())).collect()
    };
    let expected = content(&reference);
    let out = tmp.path().join("out");
    kill_loop(
        "cache",
        &args(&out),
        &out,
        &|| complete_shards(&out) as u64,
        (units, full / units as u32, full),
        &|| ok(&args(&out), "cache rerun after a kill"),
        &|what| {
            let got = content(&out);
            let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(names(&got), names(&expected), "{what}: different files");
            for ((n, a), (_, b)) in got.iter().zip(&expected) {
                assert!(a == b, "{what}: {n} differs from the uninterrupted cache");
            }
            assert!(out.join(srcache_cache::DONE_FILE).exists(), "{what}: no completion marker");
        },
    );
}

#[test]
fn killed_train_resumes_to_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = small_cache(tmp.path(), "data", 4);
    let cfg = tmp.path().join("train.toml");
    const STEPS: u64 = 40;
    const EVERY: u64 = 5;
    std::fs::write(&cfg, train_toml(STEPS, EVERY)).expect("toml");
    let args = |run: &Path, resume: bool| -> Vec<String> {
        let mut v: Vec<String> = ["train", "--data", s(&data), "--out", s(run), "--config", s(&cfg), "--device", "cpu"].map(String::from).to_vec();
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let reference = tmp.path().join("reference");
    let t = Instant::now();
    ok(&args(&reference, false), "reference run");
    let full = t.elapsed();
    // The run's result: final checkpoint, exported model, config, and the loss curve without its timing columns.
    let result = |run: &Path| -> Vec<(String, Vec<u8>)> {
        let last = format!("ckpt/step-{STEPS:08}");
        let mut v: Vec<(String, Vec<u8>)> =
            ingest_common::dataset_files(&run.join(&last)).into_iter().map(|(n, b)| (format!("{last}/{n}"), b)).collect();
        for f in ["fusion.pt", "fusion.json", "config.toml", "ckpt/latest"] {
            v.push((f.into(), std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{}: {f}: {e}", run.display()))));
        }
        let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
        let header: Vec<&str> = csv.lines().next().unwrap_or_default().split(',').collect();
        let timing = |i: usize| header.get(i).is_some_and(|h| h.ends_with("_per_s"));
        let curve: String =
            csv.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| !timing(*i)).map(|(_, c)| c).collect::<Vec<_>>().join(",") + "\n").collect();
        v.push(("metrics.csv without timings".into(), curve.into_bytes()));
        v
    };
    let expected = result(&reference);
    let out = tmp.path().join("out");
    kill_loop(
        "train",
        &args(&out, false),
        &out,
        &|| checkpoints(&out) / EVERY,
        (STEPS / EVERY - 1, full / (STEPS / EVERY) as u32, full),
        &|| ok(&args(&out, out.exists()), "train --resume after a kill"),
        &|what| {
            for ((n, a), (_, b)) in result(&out).iter().zip(&expected) {
                assert!(a == b, "{what}: {n} differs from the uninterrupted run");
            }
        },
    );
}
