//! Issue #15, ingest: `srcache ingest patches` killed with SIGKILL at seeded points, then rerun with the same
//! command, must leave exactly the dataset an uninterrupted run writes: every shard, the manifest and
//! `ingest.json`, byte for byte, and no stray file.
//!
//! A kill point is (k, delay): wait until k shard files are complete, then sleep `delay`, then SIGKILL. For
//! k ≥ 1 the delay is 0..4 ms (a shard takes ~10 ms here), so kills fall inside a shard, between shards, and
//! (k = all) in the manifest write at the end; for k = 0 it is a time offset anywhere in an uninterrupted run's
//! duration, which also covers the start (before and during the `ingest.json` write). Points are drawn from
//! a seeded generator (`SRCACHE_KILL_SEED`, default 15); a run that finished before its kill does not count.
//! `SRCACHE_KILL_POINTS=200` runs more (default 12). Ends with `kill ingest: N kills, N survived`.

mod ingest_common;
mod reliability_common;

use std::path::Path;
use std::time::{Duration, Instant};

use ingest_common::{assert_same_dataset, s, small_photos, srcache};
use reliability_common::{complete_shards, env_num, run_and_kill, Rng};

#[test]
fn killed_ingest_reruns_to_the_uninterrupted_dataset() {
    let points = env_num("SRCACHE_KILL_POINTS", 12);
    let mut rng = Rng(env_num("SRCACHE_KILL_SEED", 15));
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    // 40 photo crops of 128x128: 49 patches each at x2 (patch 16, stride 8), ~7 MiB of raw samples, ~7 shards.
    small_photos(&hr, 40, 128);
    let args = |out: &Path| -> Vec<String> {
        [
            "ingest",
            "patches",
            "--hr",
            s(&hr),
            "--out",
            s(out),
            "--scale",
            "2",
            "--patch",
            "16",
            "--stride",
            "8",
            "--codec",
            "raw",
            "--shard-mib",
            "1",
            "--workers",
            "2",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |out: &Path| {
        let a = args(out);
        srcache(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let reference = tmp.path().join("reference");
    let t = Instant::now();
    let r = run(&reference);
    assert_eq!(r.code(), Some(0), "{}", r.text());
    let full_run = t.elapsed();
    let shards = complete_shards(&reference);
    assert!(shards >= 5, "want a multi-shard dataset, got {shards} shard(s)");

    let out = tmp.path().join("out");
    let (mut kills, mut survived, mut tries) = (0u64, 0u64, 0u64);
    // Complete shards on disk at each kill: shows the kills spread over the run.
    let mut at_kill = vec![0usize; shards + 1];
    while kills < points {
        tries += 1;
        assert!(tries < points * 5 + 20, "runs keep finishing before their kill point ({kills} kills in {tries} tries)");
        let k = rng.below(shards as u64 + 1) as usize;
        let delay = match k {
            0 => Duration::from_micros(rng.below(full_run.as_micros() as u64)),
            _ => Duration::from_micros(rng.below(4_000)),
        };
        let limit = full_run * 10 + Duration::from_secs(30);
        if !run_and_kill(&args(&out), &|| complete_shards(&out) as u64, k as u64, delay, limit) {
            // It completed before the kill point: not a kill. Start the next point from scratch.
            std::fs::remove_dir_all(&out).expect("rm out");
            continue;
        }
        at_kill[complete_shards(&out).min(shards)] += 1;
        kills += 1;
        // The same command again must finish the dataset exactly.
        let r = run(&out);
        assert_eq!(r.code(), Some(0), "rerun after a kill at shard {k} + {delay:?}: {}", r.text());
        assert_same_dataset(&out, &reference, &format!("kill #{kills} at shard {k} + {delay:?}"));
        survived += 1;
        std::fs::remove_dir_all(&out).expect("rm out");
    }
    println!("kill ingest: {kills} kills, {survived} survived");
    println!("  complete shards at the kill (0..={shards}): {at_kill:?}; {tries} runs started; an uninterrupted run takes {full_run:.2?}");
}
