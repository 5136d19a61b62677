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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ingest_common::{assert_same_dataset, s, small_photos, srcache};
use srcache_tests::srcache_bin;

/// splitmix64: a seeded sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn complete_shards(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("shard-") && n.ends_with(".srs"))).count())
        .unwrap_or(0)
}

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
        let mut child = Command::new(srcache_bin())
            .args(args(&out))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + full_run * 10 + Duration::from_secs(30);
        let mut finished = false;
        while complete_shards(&out) < k {
            if child.try_wait().expect("wait").is_some() {
                finished = true;
                break;
            }
            assert!(Instant::now() < deadline, "HANG: the run never reached shard {k}");
            std::thread::sleep(Duration::from_micros(500));
        }
        if !finished {
            std::thread::sleep(delay);
            finished = child.try_wait().expect("wait").is_some();
        }
        if finished {
            // It completed before the kill point: not a kill. Start the next point from scratch.
            let _ = child.wait();
            std::fs::remove_dir_all(&out).expect("rm out");
            continue;
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        at_kill[complete_shards(&out).min(shards)] += 1;
        assert!(status.code().is_none(), "killed run reported exit {status:?}");
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
