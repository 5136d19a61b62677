//! Issue #15, ingest: a rerun into an existing `ingest patches` output resumes only the same ingest. The
//! output records its settings and input fingerprints (`ingest.json`); other inputs or settings are refused
//! with the difference named, `--force` starts over deleting only srcache's files, and a directory that is
//! not a dataset (e.g. `--out ~`) is refused outright.

mod ingest_common;

use std::path::Path;

use ingest_common::{assert_same_dataset, s, samples, small_photos, srcache};

/// `ingest patches` with the test's settings; a flag in `extra` replaces the default of the same name.
fn patches(hr: &Path, out: &Path, extra: &[&str]) -> ingest_common::Run {
    let mut args = vec!["ingest", "patches", "--hr", s(hr), "--out", s(out)];
    for pair in [["--codec", "raw"], ["--scale", "2"], ["--patch", "16"], ["--stride", "16"]] {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(&pair);
        }
    }
    args.extend_from_slice(extra);
    srcache(&args)
}

fn ok(r: &ingest_common::Run) {
    assert_eq!(r.code(), Some(0), "{}", r.text());
}

fn refused(r: &ingest_common::Run, wants: &[&str]) {
    assert_eq!(r.code(), Some(1), "{}", r.text());
    assert!(!r.panicked(), "{}", r.text());
    for w in wants {
        assert!(r.stderr.contains(w), "want {w:?} in {}", r.text());
    }
}

#[test]
fn other_inputs_or_settings_are_refused_and_force_starts_over() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    small_photos(&a, 8, 96);
    // b: a's files minus 003.png, plus 008.png, and 005.png re-encoded (another photo crop under its name).
    small_photos(&b, 9, 96);
    std::fs::remove_file(b.join("003.png")).expect("rm");
    std::fs::copy(b.join("000.png"), b.join("005.png")).expect("cp");
    let out = tmp.path().join("out");
    ok(&patches(&a, &out, &[]));
    let first = samples(&out);
    assert!(Path::new(&out.join("ingest.json")).exists());

    // Another folder: the files added, removed and changed are named, nothing is appended.
    let r = patches(&b, &out, &[]);
    refused(&r, &["holds a different ingest", "added (008.png)", "removed (003.png)", "changed (005.png", "--force"]);
    assert_eq!(samples(&out), first, "a refused run must not touch the dataset");

    // Another setting: named with both values.
    refused(&patches(&a, &out, &["--stride", "8"]), &["stride was 16, now 8"]);
    refused(&patches(&a, &out, &["--codec", "zstd"]), &["codec was"]);
    refused(&patches(&a, &out, &["--variant", "noise:5"]), &["variants was [\"clean\"], now [\"noise:5\"]"]);

    // The same ingest resumes (nothing new), also from a copy of the input folder elsewhere.
    let r = patches(&a, &out, &["--workers", "3", "--strict"]);
    ok(&r);
    assert!(r.stdout.contains("(0 new)"), "{}", r.text());
    let copy = tmp.path().join("copy-of-a");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for e in std::fs::read_dir(&a).expect("ls") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, copy.join(p.file_name().expect("name"))).expect("cp");
    }
    let r = patches(&copy, &out, &[]);
    ok(&r);
    assert!(r.stdout.contains("(0 new)"), "{}", r.text());

    // --force starts over: the result is a fresh run of b, byte for byte.
    ok(&patches(&b, &out, &["--force"]));
    let fresh = tmp.path().join("fresh");
    ok(&patches(&b, &fresh, &[]));
    // ingest.json names the input folder, which is the same here.
    assert_same_dataset(&out, &fresh, "--force run vs fresh run");
}

#[test]
fn foreign_directories_and_datasets_without_a_record_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = tmp.path().join("a");
    small_photos(&a, 3, 96);

    // A directory with a user's file (think --out ~): refused, with or without --force, and left untouched.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::write(home.join("notes.txt"), b"mine").expect("write");
    for extra in [&[][..], &["--force"][..]] {
        refused(&patches(&a, &home, extra), &["holds files srcache did not write", "notes.txt"]);
        assert_eq!(std::fs::read_dir(&home).expect("ls").count(), 1);
    }

    // A dataset without ingest.json (an older srcache, or another producer): refused; --force starts over.
    let out = tmp.path().join("out");
    ok(&patches(&a, &out, &[]));
    std::fs::remove_file(out.join("ingest.json")).expect("rm");
    refused(&patches(&a, &out, &[]), &["without ingest.json"]);
    ok(&patches(&a, &out, &["--force"]));
    assert!(out.join("ingest.json").exists());

    // Only a killed run's temporary files: a fresh start, no --force needed.
    let killed = tmp.path().join("killed");
    std::fs::create_dir_all(&killed).expect("mkdir");
    std::fs::write(killed.join("ingest.json.srcache-tmp"), b"{half").expect("write");
    std::fs::write(killed.join("shard-00000.srs.srcache-tmp"), b"half a shard").expect("write");
    ok(&patches(&a, &killed, &[]));
    assert_same_dataset(&killed, &out, "fresh run over temporary files vs --force run");
}
