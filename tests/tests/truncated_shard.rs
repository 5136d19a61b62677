//! Issue #15: a shard truncated by another process while srcache has it mapped. Before each tensor access the
//! reader re-checks the file's length (an error naming the shard); in the window between that check and the
//! read, the page fault (SIGBUS) is caught by the binary's handler, which names the shard and exits 1 instead
//! of dying silently with exit 135. The second case runs in a child process (this test binary re-executed),
//! since the fault ends the process by design.

use std::path::{Path, PathBuf};
use std::process::Command;

use srcache_formats::{Codec, DType, SampleMeta, Schema, Shard, ShardWriter, TensorSpec};

const CHILD_ENV: &str = "SRCACHE_TEST_SIGBUS_SHARD";
const MIB: usize = 1 << 20;

/// A shard of two samples of one raw 4 MiB tensor: pages enough that a truncation unmaps what is read.
fn write_shard(dir: &Path) -> PathBuf {
    let path = dir.join("shard-00000.srs");
    let schema = Schema::new(vec![TensorSpec::new("x", DType::U8, &[4 * MIB], Codec::Raw)]);
    let mut w = ShardWriter::try_new(&path, schema).expect("writer");
    for k in 0..2u8 {
        let data: Vec<u8> = (0..4 * MIB).map(|i| (i as u8).wrapping_mul(31).wrapping_add(k)).collect();
        w.write(&SampleMeta { id: format!("s{k}"), ..Default::default() }, &[&data]).expect("write");
    }
    w.finish().expect("finish");
    path
}

#[test]
fn a_truncated_shard_is_an_error_naming_it_on_the_next_access() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = write_shard(tmp.path());
    let shard = Shard::open(&path).expect("open");
    assert!(shard.tensor(1, "x").and_then(|v| v.decode()).is_ok());
    std::fs::OpenOptions::new().write(true).open(&path).expect("open rw").set_len(4096).expect("truncate");
    let err = shard.tensor(1, "x").err().expect("a truncated shard must not be read").to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("changed on disk"), "{err}");
    // `verify` on the truncated file says which shard and why, in one line.
    let out = Command::new(srcache_tests::srcache_bin()).args(["verify", &path.display().to_string()]).output().expect("verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(format!("{stdout}{stderr}").contains("shard-00000.srs"), "{stdout}{stderr}");
}

#[test]
fn a_fault_inside_the_mapped_range_names_the_shard_and_exits_1() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // The child: read a payload after its file was cut under the map, past the length check.
        srcache_formats::sigbus::install();
        let path = PathBuf::from(path);
        let shard = Shard::open(&path).expect("open");
        let view = shard.tensor(1, "x").expect("tensor");
        std::fs::OpenOptions::new().write(true).open(&path).expect("open rw").set_len(0).expect("truncate");
        let sum = view.stored().iter().map(|&b| u64::from(b)).sum::<u64>();
        println!("read {sum} without a fault");
        std::process::exit(3);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let path = write_shard(tmp.path());
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "a_fault_inside_the_mapped_range_names_the_shard_and_exits_1", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .output()
        .expect("child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("exit {:?}\n--- stdout\n{}--- stderr\n{stderr}", out.status.code(), String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "want exit 1 from the SIGBUS handler, not a silent 135: {text}");
    let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
    assert!(line.contains(&path.display().to_string()) && line.contains("changed on disk"), "{text}");
}
