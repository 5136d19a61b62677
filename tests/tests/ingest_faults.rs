//! Issue #15, ingest: one bad file among fifty, a worker panic, and bad numbers, through the real binary.
//! Each run is under a timeout (a hang fails the test). A bad input file is skipped and recorded (manifest,
//! `srcache inspect`, stderr) or fails a strict run naming it; a panic or a failed write fails every run
//! naming the file; nothing panics the process or exits 0 having written nothing.

mod ingest_common;

use std::path::Path;

use ingest_common::{s, samples, skipped, small_photos, srcache, srcache_env, TIMEOUT};

/// 96x96 HR at x2 is 48x48 LR: 3x3 patches of 16 at stride 16.
const PER_IMAGE: usize = 9;
const PATCH_ARGS: [&str; 8] = ["--scale", "2", "--patch", "16", "--stride", "16", "--workers", "2"];

/// 50 files: 49 real photo crops and `025.png`, a 1x1 PNG (smaller than the scale).
fn fifty_with_a_tiny_one(dir: &Path) {
    small_photos(dir, 50, 96);
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(dir.join("025.png")).expect("save");
}

/// `ingest patches` with the test's settings; a flag in `extra` replaces the default of the same name.
fn patches(hr: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["ingest", "patches", "--hr", s(hr), "--out", s(out), "--codec", "raw"].map(String::from).to_vec();
    for pair in PATCH_ARGS.chunks(2) {
        if !extra.contains(&pair[0]) {
            v.extend(pair.iter().map(|x| x.to_string()));
        }
    }
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_tiny_image_among_fifty_is_skipped_and_recorded_or_fails_strict_runs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    fifty_with_a_tiny_one(&hr);

    // Non-strict patches: every good file's samples, the tiny one skipped with its reason.
    let out = tmp.path().join("patches");
    let r = srcache(&refs(&patches(&hr, &out, &[])));
    assert_eq!(r.code(), Some(0), "{}", r.text());
    assert!(!r.panicked(), "{}", r.text());
    assert!(r.stderr.contains("025.png") && r.stderr.contains("smaller than the scale 2"), "{}", r.text());
    assert_eq!(samples(&out), 49 * PER_IMAGE);
    let listed = skipped(&out);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].path.ends_with("025.png") && listed[0].reason.contains("1x1"), "{listed:?}");
    let i = srcache(&["inspect", s(&out)]);
    assert!(i.stdout.contains("1 input file(s) skipped") && i.stdout.contains("025.png"), "{}", i.text());

    // Non-strict LR folder: 49 written, the tiny one reported.
    let lr = tmp.path().join("lr");
    let r = srcache(&["ingest", "lr", "--hr", s(&hr), "--out", s(&lr), "--scale", "2"]);
    assert_eq!(r.code(), Some(0), "{}", r.text());
    assert!(r.stdout.contains("wrote 49 LR images"), "{}", r.text());
    assert!(r.stderr.contains("025.png") && r.stderr.contains("smaller than the scale"), "{}", r.text());
    assert_eq!(std::fs::read_dir(&lr).expect("ls").count(), 49);

    // Strict: a non-zero exit naming the file, no panic.
    for args in [
        patches(&hr, &tmp.path().join("strict"), &["--strict"]),
        ["ingest", "lr", "--hr", s(&hr), "--out", s(&tmp.path().join("strict-lr")), "--scale", "2", "--strict"].map(String::from).to_vec(),
    ] {
        let r = srcache(&refs(&args));
        assert_eq!(r.code(), Some(1), "{args:?}: {}", r.text());
        assert!(!r.panicked(), "{}", r.text());
        assert!(r.stderr.contains("025.png") && r.stderr.contains("smaller than the scale"), "{}", r.text());
    }
}

#[test]
fn a_worker_panic_ends_the_run_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    small_photos(&hr, 50, 96);
    let hook = [(srcache_ingest::FAULT_PANIC_ENV, "030")];
    for workers in ["1", "3"] {
        let out = tmp.path().join(format!("patches-{workers}"));
        let mut args = patches(&hr, &out, &["--workers", workers]);
        for strict in [false, true] {
            if strict {
                args.push("--strict".into());
            }
            let r = srcache_env(&refs(&args), &hook, TIMEOUT);
            // The worker's panic message is printed (it is a bug report), but the process exits with an error.
            assert_eq!(r.code(), Some(1), "workers {workers}, strict {strict}: {}", r.text());
            assert!(r.stderr.contains("error:") && r.stderr.contains("030.png") && r.stderr.contains("panicked"), "{}", r.text());
            assert!(r.secs < 30.0, "took {:.1}s", r.secs);
        }
    }
    let r = srcache_env(&["ingest", "lr", "--hr", s(&hr), "--out", s(&tmp.path().join("lr")), "--scale", "2"], &hook, TIMEOUT);
    assert_eq!(r.code(), Some(1), "{}", r.text());
    assert!(r.stderr.contains("error:") && r.stderr.contains("030.png") && r.stderr.contains("panicked"), "{}", r.text());
}

#[test]
fn bad_numbers_are_refused_and_nothing_written_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    small_photos(&hr, 3, 96);
    let out = tmp.path().join("out");
    let refused = |args: Vec<String>, want: &str| {
        let r = srcache(&refs(&args));
        assert_eq!(r.code(), Some(1), "{args:?}: {}", r.text());
        assert!(!r.panicked(), "{}", r.text());
        assert!(r.stderr.contains(want), "{args:?}: want {want:?} in {}", r.text());
        assert!(!out.exists(), "{args:?} left {} behind", out.display());
    };
    refused(patches(&hr, &out, &["--stride", "0"]), "stride 0");
    refused(patches(&hr, &out, &["--patch", "0"]), "patch size 0");
    for scale in ["0", "9", "1000"] {
        refused(patches(&hr, &out, &["--scale", scale]), &format!("scale {scale} is outside 1..=8"));
        refused(["ingest", "lr", "--hr", s(&hr), "--out", s(&out), "--scale", scale].map(String::from).to_vec(), "outside 1..=8");
    }
    refused(patches(&hr, &out, &["--shard-mib", "0"]), "--shard-mib 0");
    // A patch larger than every image: nothing to write is an error that says why.
    refused(patches(&hr, &out, &["--patch", "64"]), "nothing written: 3 input file(s) skipped");

    // Output writes failing are fatal, not a skipped input: block one LR file's name with a directory.
    let lr = tmp.path().join("lr");
    std::fs::create_dir_all(lr.join("001x2.png")).expect("mkdir");
    let r = srcache(&["ingest", "lr", "--hr", s(&hr), "--out", s(&lr), "--scale", "2"]);
    assert_eq!(r.code(), Some(1), "{}", r.text());
    assert!(r.stderr.contains("001x2.png") && r.stderr.contains("cannot write"), "{}", r.text());
}
