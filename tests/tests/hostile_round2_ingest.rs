//! Issue #25, reliability round 2, ingest and the full-image commands: `ingest lr` over a user's file or into
//! its own HR folder, two `ingest patches` into one folder, an input replaced while a cache reads it (and put
//! back afterwards), EXIF orientation, the decode memory budget, and `infer`/`eval` naming the images they skip
//! when stderr is not a terminal. The real binary on real photos. Each test ends with
//! `<suite>: N cases, 0 panics, 0 hangs`.

mod ingest_common;
mod reliability_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ingest_common::{s, small_photos};
use reliability_common::{cache_args, lock_held, refs, refused, spawn, succeeds, Tally};

const TIMEOUT: Duration = Duration::from_secs(120);

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        out.insert(e.path(), std::fs::read(e.path()).unwrap_or_default());
    }
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The shards and manifest of two datasets are byte for byte the same.
fn same_samples(a: &Path, b: &Path, what: &str) {
    for f in ["manifest.parquet", "shard-00000.srs"] {
        assert!(std::fs::read(a.join(f)).ok() == std::fs::read(b.join(f)).ok(), "{what}: {f} differs");
    }
}

#[test]
fn ingest_lr_never_overwrites_a_users_file_nor_writes_into_its_hr_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();
    let hr = tmp.path().join("hr");
    small_photos(&hr, 3, 64);
    let hr_before = snapshot(&hr);

    // A user's file under an LR name: refused by name before anything is written, and left as it was.
    let out = tmp.path().join("lr");
    std::fs::create_dir_all(&out).expect("mkdir");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(out.join("001x2.png")).expect("user png");
    let before = snapshot(&out);
    refused(
        &mut t,
        "ingest lr over a user's 001x2.png",
        &["ingest", "lr", "--hr", s(&hr), "--scale", "2", "--out", s(&out)],
        &["001x2.png"],
        "not overwritten",
    );
    assert_eq!(snapshot(&out), before, "ingest lr changed the user's folder");

    // --out = --hr, or inside it: the LR would be read as HR by the next scan.
    for (label, o) in [("ingest lr --out = --hr", hr.clone()), ("ingest lr --out inside --hr", hr.join("x2"))] {
        refused(&mut t, label, &["ingest", "lr", "--hr", s(&hr), "--scale", "2", "--out", s(&o)], &[s(&o)], "HR folder");
        assert_eq!(snapshot(&hr), hr_before, "{label} changed the HR folder");
    }

    // Its own output is rewritten by a rerun (same bytes), not refused.
    let fresh = tmp.path().join("lr-fresh");
    let args = ["ingest", "lr", "--hr", s(&hr), "--scale", "2", "--out", s(&fresh)];
    succeeds(&mut t, "ingest lr", &args, &[]);
    let first = snapshot(&fresh);
    succeeds(&mut t, "ingest lr again into its own output", &args, &[]);
    assert_eq!(snapshot(&fresh), first, "a rerun changed its own output");
    t.finish("hostile round 2: ingest lr");
}

/// A JPEG of `img` carrying an EXIF APP1 segment with `orientation`.
fn jpeg_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(img).expect("jpeg");
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"\xff\xe1".to_vec();
    app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_memory_budget_and_skips_named_without_a_terminal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();

    // D20: an orientation-6 JPEG (stored 64x32, shown 32x64 rotated a quarter turn clockwise).
    let hr = tmp.path().join("exif");
    std::fs::create_dir_all(&hr).expect("mkdir");
    let stored = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([(x * 4) as u8, (y * 8) as u8, ((x + y) * 2) as u8]));
    let bytes = jpeg_with_orientation(&stored, 6);
    std::fs::write(hr.join("turned.jpg"), &bytes).expect("write jpeg");
    let lr = tmp.path().join("exif-lr");
    succeeds(&mut t, "ingest lr of an orientation-6 JPEG", &["ingest", "lr", "--hr", s(&hr), "--scale", "2", "--out", s(&lr)], &[]);
    let shown = image::imageops::rotate90(&image::load_from_memory(&bytes).expect("decode").into_rgb8());
    let (_, want) = srcache_ingest::resize::try_bicubic_lr(&shown, 2).expect("lr");
    let got = image::open(lr.join("turnedx2.png")).expect("lr png").into_rgb8();
    assert_eq!(got.dimensions(), (16, 32), "the LR of an orientation-6 JPEG is not upright");
    assert!(got == want, "the LR pixels are not those of the upright picture");

    // D21: images over the decode memory budget are processed one at a time, with a warning; same output.
    let big = tmp.path().join("big");
    small_photos(&big, 4, 256);
    let (a, b) = (tmp.path().join("budget-a"), tmp.path().join("budget-b"));
    let patches = |out: &Path| strings(&["ingest", "patches", "--hr", s(&big), "--scale", "2", "--patch", "32", "--workers", "2", "--out", s(out)]);
    succeeds(&mut t, "ingest patches", &refs(&patches(&a)), &[]);
    let text = succeeds(&mut t, "ingest patches under a 1 MiB budget", &refs(&patches(&b)), &[(srcache_ingest::budget::BUDGET_ENV, "1")]);
    assert!(text.contains("over the decode memory budget"), "no warning for images over the budget:\n{text}");
    same_samples(&a, &b, "ingest under a memory budget");

    // D18: infer and eval name each skipped image and why, with stderr a pipe.
    let imgs = tmp.path().join("imgs");
    small_photos(&imgs, 2, 48);
    std::fs::write(imgs.join("broken.png"), b"\x89PNG\r\n\x1a\nnot a png at all").expect("broken");
    let stack = ["--expert", "b=builtin:bicubic", "--scale", "2"];
    let inferred = tmp.path().join("inferred");
    let mut args = vec!["infer", s(&imgs), "--out", s(&inferred)];
    args.extend(stack);
    if let Some(r) = t.run("infer over a broken PNG", &args, &[], TIMEOUT) {
        let ok = r.code() == Some(1) && r.stderr.lines().any(|l| l.contains("broken.png") && l.contains("skipped") && l.contains("decode"));
        t.check("infer over a broken PNG", &r, if ok { Ok(()) } else { Err("want exit 1 and a line naming broken.png and why".into()) });
    }
    let bench = tmp.path().join("bench");
    small_photos(&bench.join("HR"), 2, 48);
    std::fs::write(bench.join("HR/broken.png"), b"\x89PNG\r\n\x1a\nnot a png at all").expect("broken");
    let mut args = vec!["eval", s(&bench)];
    args.extend(stack);
    if let Some(r) = t.run("eval over a broken PNG", &args, &[], TIMEOUT) {
        let ok = r.code() == Some(1) && r.stderr.contains("broken.png") && r.stdout.contains("PSNR");
        t.check("eval over a broken PNG", &r, if ok { Ok(()) } else { Err("want the table, exit 1 and broken.png named".into()) });
    }
    t.finish("hostile round 2: decode");
}

#[test]
fn two_ingests_into_one_folder_and_an_input_replaced_during_a_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = Tally::default();

    // D19: a second `ingest patches` (plain or --force) into a folder another one is writing is refused.
    let hr = tmp.path().join("hr");
    small_photos(&hr, 150, 192);
    let out = tmp.path().join("patches");
    let base = |out: &Path| {
        strings(&[
            "ingest",
            "patches",
            "--hr",
            s(&hr),
            "--scale",
            "2",
            "--patch",
            "16",
            "--stride",
            "16",
            "--workers",
            "1",
            "--zstd-level",
            "19",
            "--out",
            s(out),
        ])
    };
    let mut first = spawn(&base(&out), &tmp.path().join("first.err"));
    let deadline = Instant::now() + TIMEOUT;
    let lock = out.join(srcache_ingest::shards::LOCK_FILE);
    while !lock_held(&lock) && first.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if lock_held(&lock) {
        refused(&mut t, "ingest patches beside a running one", &refs(&base(&out)), &[s(&out)], "another srcache process");
        let mut forced = base(&out);
        forced.push("--force".into());
        refused(&mut t, "ingest patches --force beside a running one", &refs(&forced), &[s(&out)], "another srcache process");
    } else {
        println!("skipped: two ingests into one folder (the first ended before its lock could be seen)");
    }
    let status = first.wait().expect("wait");
    assert!(status.success(), "the first ingest failed: {}", std::fs::read_to_string(tmp.path().join("first.err")).unwrap_or_default());
    let clean = tmp.path().join("patches-clean");
    succeeds(&mut t, "a clean ingest", &refs(&base(&clean)), &[]);
    same_samples(&out, &clean, "the ingest run beside refused ones");

    // Storage numbers out of range are refused before the folder is touched (no record left to refuse the fix).
    let bad = tmp.path().join("bad-level");
    let mut args = base(&bad);
    args.iter_mut().filter(|a| a.as_str() == "19").for_each(|a| *a = "1000".into());
    refused(&mut t, "ingest patches --zstd-level 1000", &refs(&args), &["zstd level 1000"], "outside");
    assert!(!bad.exists(), "a refused ingest made {}", bad.display());

    // D17: the last input replaced right after the cache fingerprinted it, and put back after the run: the run
    // fails naming it (its changed bytes never become samples), and the rerun equals a clean cache.
    let inputs = tmp.path().join("in");
    small_photos(&inputs, 60, 96);
    let victim = inputs.join("059.png");
    let kept = tmp.path().join("059.orig");
    std::fs::copy(&victim, &kept).expect("keep");
    let cache = tmp.path().join("cache");
    let args = cache_args(&inputs, &cache, 16, &["--batch", "2"]);
    let mut run = spawn(&args, &tmp.path().join("cache.err"));
    let deadline = Instant::now() + TIMEOUT;
    while !cache.join(srcache_cache::INPUTS_FILE).exists() && run.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Replaced by a rename (never half-written), with another picture of another size.
    let other = tmp.path().join("other.png");
    image::imageops::crop_imm(&image::open(inputs.join("000.png")).expect("open").into_rgb8(), 0, 0, 80, 80).to_image().save(&other).expect("save");
    std::fs::rename(&other, &victim).expect("replace");
    let status = run.wait().expect("wait");
    std::fs::copy(&kept, &victim).expect("restore");
    let err = std::fs::read_to_string(tmp.path().join("cache.err")).unwrap_or_default();
    t.cases += 1;
    if status.success() {
        println!("skipped: the input-replaced-during-a-run check (the run read 059.png before it was replaced)");
    } else if !(err.contains("059.png") && err.contains("changed while the run was reading it")) {
        t.failures.push(format!("cache over a replaced input: exit {:?} without naming 059.png as changed:\n{err}", status.code()));
    }
    succeeds(&mut t, "cache rerun after the input was put back", &refs(&args), &[]);
    let reference = tmp.path().join("reference");
    succeeds(&mut t, "a clean cache", &refs(&cache_args(&inputs, &reference, 16, &["--batch", "2"])), &[]);
    same_samples(&cache, &reference, "the rerun after an input was replaced and put back");
    t.finish("hostile round 2: concurrent ingest, replaced inputs");
}
