//! Helpers of the reliability tests (issue #15: `hostile_cache_train`, `crafted_shards`, `kill_cache_train`,
//! `kill_ingest`): a tally of cases, panics and hangs; the one-line error rule;
//! a seeded generator; small caches and training configs on real photos; and a builder of shard bytes straight
//! from FORMAT.md (valid checksums around hostile content).
//!
//! Needs `mod ingest_common;` next to it in the test file (the runner under a timeout lives there).

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ingest_common::{s, small_photos, srcache_timed, Run};

/// splitmix64: a seeded sequence without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Finished shard files in `dir` (a shard appears under its final name only once complete).
pub fn complete_shards(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("shard-") && n.ends_with(".srs"))).count())
        .unwrap_or(0)
}

/// Runs `args` to completion, killing it at (k units of `progress`, then `delay`); true when it was killed,
/// false when it finished first.
pub fn run_and_kill(args: &[String], progress: &dyn Fn() -> u64, k: u64, delay: Duration, limit: Duration) -> bool {
    let mut child = std::process::Command::new(srcache_tests::srcache_bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    while progress() < k {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "HANG: the run never reached progress {k}");
        std::thread::sleep(Duration::from_micros(500));
    }
    std::thread::sleep(delay);
    if child.try_wait().expect("wait").is_some() {
        return false;
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    if status.success() {
        // It exited between the last check and the signal: a finished run, not a kill.
        return false;
    }
    assert!(status.code().is_none(), "killed run reported {status:?}");
    true
}

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Text a libtorch C++ exception or a Rust panic leaves on stderr: never acceptable in a user-facing error.
const TRACE_MARKS: [&str; 7] =
    ["Exception raised from", "frame #", "C++ CapturedTraceback", "stack backtrace", "panicked at", "RUST_BACKTRACE", "libc10"];

/// Why `line` repeats itself (`X: Y: X: Y`, or one clause twice), if it does. Clauses are the `": "`-separated
/// chunks; short ones (paths, numbers) may legitimately recur, so only chunks of 12+ characters count, plus any
/// chunk equal to its neighbour.
pub fn repetition(line: &str) -> Option<String> {
    let chunks: Vec<&str> = line.split(": ").map(str::trim).collect();
    for w in chunks.windows(2) {
        if w[0] == w[1] && !w[0].is_empty() {
            return Some(format!("{:?} twice in a row", w[0]));
        }
    }
    for (i, c) in chunks.iter().enumerate() {
        if c.len() >= 12 && chunks[i + 1..].iter().any(|o| o == c) {
            return Some(format!("{c:?} twice"));
        }
        // A long clause quoted inside a later one ("... (X: Y)") is the same text twice too.
        if c.len() >= 24 && chunks[i + 1..].iter().any(|o| o.contains(c)) {
            return Some(format!("{c:?} repeated inside a later clause"));
        }
    }
    None
}

/// The error rule of the CLI: exit 1; stderr holds exactly one line and it starts with `error: `; no clause is
/// repeated; no panic, C++ trace or backtrace; and it names `names` (a file or directory the user gave). Returns
/// what is wrong, if anything.
pub fn error_rule(r: &Run, names: &[&str]) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = r.status.signal() {
        return Err(format!("killed by signal {sig}"));
    }
    if r.code() != Some(1) {
        return Err(format!("exit {:?}, not 1", r.code()));
    }
    if let Some(m) = TRACE_MARKS.iter().find(|m| r.stderr.contains(**m)) {
        return Err(format!("stderr holds {m:?}"));
    }
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        return Err(format!("{} stderr lines, want exactly one", lines.len()));
    }
    let line = lines[0];
    if !line.starts_with("error: ") {
        return Err("the line does not start with `error: `".into());
    }
    if let Some(why) = repetition(line) {
        return Err(format!("the error repeats itself: {why}"));
    }
    if !names.is_empty() && !names.iter().any(|n| line.contains(n)) {
        return Err(format!("the error names none of {names:?}"));
    }
    Ok(())
}

/// Counts cases, panics (101, SIGABRT, a panic message), crashes (any other signal: SIGSEGV, SIGBUS) and hangs,
/// and collects every failed expectation, so a suite reports all its findings at once.
#[derive(Default)]
pub struct Tally {
    pub cases: usize,
    pub panics: Vec<String>,
    pub hangs: Vec<String>,
    pub failures: Vec<String>,
}

impl Tally {
    /// One run of the binary; None when it hung (killed after `timeout`, counted).
    pub fn run(&mut self, label: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Option<Run> {
        use std::os::unix::process::ExitStatusExt;
        self.cases += 1;
        match srcache_timed(args, env, timeout) {
            Err(stderr) => {
                self.hangs.push(format!("{label}: still running after {timeout:?}; stderr: {stderr}"));
                None
            }
            Ok(r) => {
                if r.panicked() || r.status.signal().is_some() {
                    self.panics.push(format!("{label}: {}", r.text()));
                }
                Some(r)
            }
        }
    }

    /// Runs many commands, `workers` at a time (the binary spends most of a short run loading libtorch, so
    /// two at once nearly halve a suite's time even on two cores). Results in the order of `jobs`.
    pub fn run_all(&mut self, jobs: &[(String, Vec<String>)], workers: usize, timeout: Duration) -> Vec<Option<Run>> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Run, String>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
        std::thread::scope(|sc| {
            for _ in 0..workers.max(1) {
                sc.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, args)) = jobs.get(k) else { break };
                    let r = srcache_timed(&refs(args), &[], timeout);
                    if let Ok(mut v) = results.lock() {
                        v[k] = Some(r);
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_default();
        let mut out = Vec::with_capacity(jobs.len());
        for ((label, _), r) in jobs.iter().zip(results) {
            use std::os::unix::process::ExitStatusExt;
            self.cases += 1;
            match r {
                None => {
                    self.failures.push(format!("{label}: did not run"));
                    out.push(None);
                }
                Some(Err(stderr)) => {
                    self.hangs.push(format!("{label}: still running after {timeout:?}; stderr: {stderr}"));
                    out.push(None);
                }
                Some(Ok(r)) => {
                    if r.panicked() || r.status.signal().is_some() {
                        self.panics.push(format!("{label}: {}", r.text()));
                    }
                    out.push(Some(r));
                }
            }
        }
        out
    }

    /// Records a failed expectation.
    pub fn check(&mut self, label: &str, r: &Run, outcome: Result<(), String>) {
        if let Err(why) = outcome {
            self.failures.push(format!("{label}: {why}\n{}", r.text()));
        }
    }

    /// Prints `<suite>: N cases, P panics, H hangs` (the line BENCHMARKS.md records) and fails on any finding.
    pub fn finish(self, suite: &str) {
        println!(
            "{suite}: {} cases, {} panics, {} hangs, {} failed expectations",
            self.cases,
            self.panics.len(),
            self.hangs.len(),
            self.failures.len()
        );
        let mut all = Vec::new();
        all.extend(self.panics.iter().map(|p| format!("PANIC/CRASH {p}")));
        all.extend(self.hangs.iter().map(|h| format!("HANG {h}")));
        all.extend(self.failures.iter().map(|f| format!("FAILED {f}")));
        assert!(all.is_empty(), "{suite}: {} finding(s):\n\n{}", all.len(), all.join("\n\n"));
    }
}

/// `srcache cache` over `hr` at x2 with two built-in experts (bicubic, lanczos3) into `out`; `extra` adds flags.
pub fn cache_args(hr: &Path, out: &Path, patch: u32, extra: &[&str]) -> Vec<String> {
    let p = patch.to_string();
    let mut v: Vec<String> =
        ["cache", "--hr", s(hr), "--out", s(out), "--scale", "2", "--patch", &p, "--stride", &p, "--quiet"].iter().map(|x| x.to_string()).collect();
    v.extend(["--expert", "bicubic=builtin:bicubic", "--expert", "lanczos=builtin:lanczos3"].map(String::from));
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A finished small cache of `n` 64x64 photo crops (x2, patch 16: 4 samples per image) in `root/name`, made with
/// the binary; returns its directory.
pub fn small_cache(root: &Path, name: &str, n: usize) -> PathBuf {
    let hr = root.join(format!("{name}-hr"));
    small_photos(&hr, n, 64);
    let out = root.join(name);
    let args = cache_args(&hr, &out, 16, &["--shard-mb", "1"]);
    let r = crate::ingest_common::srcache(&refs(&args));
    assert_eq!(r.code(), Some(0), "small cache: {}", r.text());
    out
}

/// A training config small enough for CI: a 1-block, 8-wide gating net, batches of 2 LR 8x8 crops, one loader
/// worker, a validation and a checkpoint every `every` steps.
pub fn train_toml(steps: u64, every: u64) -> String {
    format!(
        "steps = {steps}\nval_every = {every}\nckpt_every = {every}\nlog_every = 1\nthreads = 1\nval_max_samples = 4\n\
         [model]\nwidth = 8\nblocks = 1\nfeat_proj = 4\n[optim]\nwarmup_steps = 2\n[loader]\nbatch_size = 2\ncrop = 8\nworkers = 1\n"
    )
}

/// Bytes of one shard built straight from FORMAT.md: `schema_json` as given (not validated), and per sample
/// one stored payload per tensor with the `raw_len` its entry claims; `metas_json` is the metadata array as
/// given. Every checksum (header, schema, payloads, index, footer) is valid, so only the content is hostile.
pub fn craft_shard(schema_json: &str, samples: &[Vec<(Vec<u8>, u64)>], metas_json: &str, n_tensors: u32) -> Vec<u8> {
    use xxhash_rust::xxh3::xxh3_64;
    let align = |b: &mut Vec<u8>| b.resize(b.len().div_ceil(64) * 64, 0);
    let schema = schema_json.as_bytes();
    let mut b = vec![0u8; 64];
    b[0..8].copy_from_slice(b"\x89SRS\r\n\x1a\n");
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&64u32.to_le_bytes());
    b[16..24].copy_from_slice(&(schema.len() as u64).to_le_bytes());
    b[24..32].copy_from_slice(&xxh3_64(schema).to_le_bytes());
    let h = xxh3_64(&b[..56]);
    b[56..64].copy_from_slice(&h.to_le_bytes());
    b.extend_from_slice(schema);
    align(&mut b);
    let mut table = Vec::new();
    for sample in samples {
        for (payload, raw_len) in sample {
            align(&mut b);
            for v in [b.len() as u64, payload.len() as u64, *raw_len, xxh3_64(payload)] {
                table.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(payload);
        }
    }
    align(&mut b);
    let index_offset = b.len() as u64;
    let mut index = table.clone();
    index.extend_from_slice(metas_json.as_bytes());
    b.extend_from_slice(&index);
    let mut f = [0u8; 64];
    f[0..8].copy_from_slice(&index_offset.to_le_bytes());
    f[8..16].copy_from_slice(&(table.len() as u64).to_le_bytes());
    f[16..24].copy_from_slice(&(metas_json.len() as u64).to_le_bytes());
    f[24..32].copy_from_slice(&(samples.len() as u64).to_le_bytes());
    f[32..40].copy_from_slice(&xxh3_64(&index).to_le_bytes());
    f[40..44].copy_from_slice(&1u32.to_le_bytes());
    f[44..48].copy_from_slice(&n_tensors.to_le_bytes());
    let fs = xxh3_64(&f[..48]);
    f[48..56].copy_from_slice(&fs.to_le_bytes());
    f[56..64].copy_from_slice(b"\x89SRSEND\n");
    b.extend_from_slice(&f);
    b
}

/// A zstd frame whose header claims `claimed` bytes of content but whose one raw block holds `body`.
pub fn lying_zstd_frame(claimed: u64, body: &[u8]) -> Vec<u8> {
    let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
    // Frame header descriptor: 8-byte content size, single segment, no checksum, no dictionary.
    f.push(0b1110_0000);
    f.extend_from_slice(&claimed.to_le_bytes());
    // One last raw block.
    let hdr = ((body.len() as u32) << 3) | 1;
    f.extend_from_slice(&hdr.to_le_bytes()[..3]);
    f.extend_from_slice(body);
    f
}

/// How long one hostile run may take before it counts as a hang.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `args`, expecting a refusal that follows the error rule, names one of `names` and holds `needle`.
pub fn refused(t: &mut Tally, label: &str, args: &[&str], names: &[&str], needle: &str) {
    if let Some(r) = t.run(label, args, &[], RUN_TIMEOUT) {
        let outcome = error_rule(&r, names).and_then(|()| match r.stderr.contains(needle) {
            true => Ok(()),
            false => Err(format!("the error does not say {needle:?}")),
        });
        t.check(label, &r, outcome);
    }
}

/// Runs `args` (with `env`), expecting exit 0; returns stdout + stderr.
pub fn succeeds(t: &mut Tally, label: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let Some(r) = t.run(label, args, env, RUN_TIMEOUT) else { return String::new() };
    let outcome = if r.code() == Some(0) { Ok(()) } else { Err(format!("exit {:?}, want 0", r.code())) };
    t.check(label, &r, outcome);
    format!("{}{}", r.stdout, r.stderr)
}

/// Whether another process holds an flock on `path` (a lock file or a directory).
pub fn lock_held(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else { return false };
    // SAFETY: flock on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    r != 0
}

/// Starts `srcache args` in the background, stderr to `err`.
pub fn spawn(args: &[String], err: &Path) -> std::process::Child {
    std::process::Command::new(srcache_tests::srcache_bin())
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(err).expect("stderr file"))
        .spawn()
        .expect("spawn")
}
