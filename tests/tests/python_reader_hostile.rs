//! Issue #25 (D3, D13, D14): the Python reader on a real cache made by the binary, then abused the ways the Rust
//! reader already survives. python/tests/check_crafted.py `tamper`:
//! * D13: manifest.parquet rewritten with pyarrow (same schema and key-value metadata, only rows lying): `index`
//!   swapped between two rows, ids swapped or duplicated, whole rows swapped, two shards swapped by name, a
//!   row's bytes / patch / psnr changed, a row dropped or repeated, and two shard files swapped on disk. Each
//!   must be a `ShardError` naming the manifest (and the row) at open, never another sample's tensors.
//! * D3: a FIFO in place of a shard or of the manifest: refused at once (a subprocess under a 20 s timeout).
//! * D14: a shard truncated under an open dataset (after its tensors were read, or before, verified or not,
//!   through `SRCacheDataset` too): every read a `ShardError` naming the shard, never SIGBUS (a subprocess: a
//!   crash is its return code).

mod ingest_common;
mod reliability_common;

use std::time::{Duration, Instant};

use reliability_common::small_cache;

#[test]
fn python_reader_checks_rows_refuses_fifos_and_survives_truncation() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 40 photos x 4 patches, shards closed at 1 MiB: 160 samples in more than one shard.
    let cache = small_cache(tmp.path(), "cache", 40);
    let shards =
        std::fs::read_dir(&cache).expect("ls").filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".srs"))).count();
    assert!(shards >= 2, "the tampering cases need two shards, got {shards}");
    let log = tmp.path().join("python.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child = std::process::Command::new(srcache_tests::venv_python())
        .arg(srcache_tests::workspace().join("python/tests/check_crafted.py"))
        .arg("tamper")
        .arg(&cache)
        .arg(tmp.path().join("work"))
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("spawn python");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check_crafted.py tamper did not finish in 600 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).expect("read log");
    println!("{text}");
    assert!(status.success(), "the Python reader failed on a tampered cache:\n{text}");
    for case in
        ["D13/swap_index", "D13/swap_ids", "D13/duplicate_id", "D13/swap_shard_names", "D13/swap_shard_files", "D3/fifo_shard", "D3/fifo_manifest"]
    {
        assert!(text.contains(&format!("ok {case}: ")), "{case} missing:\n{text}");
    }
    assert!(text.contains("D14/truncate_after_read") && text.contains(", 0 failed"), "{text}");
}
