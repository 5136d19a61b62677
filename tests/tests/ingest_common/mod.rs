//! Helpers of the ingest end-to-end tests (`ingest_faults`, `ingest_resume`, `hostile_ingest`, `kill_ingest`):
//! the real binary under a timeout (a hang fails the test instead of stalling CI), small real photos, and
//! byte-for-byte dataset comparison.

#![allow(dead_code)] // each test file uses a different subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use srcache_tests::{photos_dir, srcache_bin};

/// A finished run of the binary.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub secs: f64,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr, for assertion messages.
    pub fn text(&self) -> String {
        format!("exit {:?} after {:.1}s\n--- stdout\n{}--- stderr\n{}", self.status.code(), self.secs, self.stdout, self.stderr)
    }

    /// Whether the process panicked: Rust's panic exit code (101), an abort (134 / SIGABRT), or a panic message.
    pub fn panicked(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        matches!(self.status.code(), Some(101) | Some(134)) || self.status.signal() == Some(6) || self.stderr.contains("panicked")
    }
}

/// Runs `srcache args...` with extra environment `env`, killing it and failing the test after `timeout` (a hang).
pub fn srcache_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
    match srcache_timed(args, env, timeout) {
        Ok(r) => r,
        Err(stderr) => panic!("HANG: srcache {args:?} still running after {timeout:?}; killed.\nstderr:\n{stderr}"),
    }
}

/// [`srcache_env`] that reports a hang as `Err(stderr so far)` (the process killed) instead of failing.
pub fn srcache_timed(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<Run, String> {
    let mut cmd = Command::new(srcache_bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Panic messages without backtraces, whatever the caller's environment says.
    cmd.env_remove("RUST_BACKTRACE").env_remove(srcache_ingest::FAULT_PANIC_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn srcache");
    // Pipes drained on their own threads so a chatty child cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Run { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default(), secs: t.elapsed().as_secs_f64() })
}

/// Every run of these tests is small: a minute means a hang.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn srcache(args: &[&str]) -> Run {
    srcache_env(args, &[], TIMEOUT)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// The real photos, decoded once per call.
pub fn photos() -> Vec<image::RgbImage> {
    ["astronaut.png", "chelsea.png", "coffee.png", "hubble.png", "rocket.png"]
        .iter()
        .map(|n| image::open(photos_dir().join(n)).unwrap_or_else(|e| panic!("{n}: {e}")).into_rgb8())
        .collect()
}

/// Writes `n` distinct `side`x`side` PNGs named `000.png`, `001.png`, … into `dir`: crops of the real photos
/// at different places (real image content, small enough that a test ingests 50 in a second).
pub fn small_photos(dir: &Path, n: usize, side: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let src = photos();
    (0..n)
        .map(|i| {
            let p = &src[i % src.len()];
            let k = (i / src.len()) as u32;
            let (x, y) = ((k * 37) % (p.width() - side), (k * 23) % (p.height() - side));
            let img = image::imageops::crop_imm(p, x, y, side, side).to_image();
            let path = dir.join(format!("{i:03}.png"));
            img.save(&path).expect("save photo");
            path
        })
        .collect()
}

/// The files of a dataset directory (name -> bytes), sorted by name.
pub fn dataset_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
        .collect();
    v.sort();
    v
}

/// Asserts two dataset directories hold the same files with the same bytes; `what` names the comparison.
pub fn assert_same_dataset(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (dataset_files(a), dataset_files(b));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "{what}: different files");
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{what}: {n} differs ({} vs {} bytes)", x.len(), y.len());
    }
}

/// Samples in a dataset, from its manifest.
pub fn samples(dir: &Path) -> usize {
    srcache_formats::Manifest::read(&srcache_formats::Manifest::path_in(dir)).expect("manifest").len()
}

/// The manifest's skipped-files list.
pub fn skipped(dir: &Path) -> Vec<srcache_ingest::Skipped> {
    let meta = srcache_formats::Manifest::read_metadata(&srcache_formats::Manifest::path_in(dir)).expect("manifest metadata");
    meta.get(srcache_formats::SKIPPED_KEY).map(|j| serde_json::from_str(j).expect("skipped json")).unwrap_or_default()
}
