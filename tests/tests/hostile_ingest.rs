//! Issue #15, ingest: a folder of hostile files next to good real photos, through the real binary:
//! `ingest lr` and `ingest patches`, each with and without `--strict`, each under a timeout (a hang is killed
//! and counted). Every run must end with the right exit code and no panic; non-strict runs must process every
//! usable image and name every bad file with its reason (stderr, and the manifest's skipped list for patches);
//! strict runs must fail naming a bad file. Ends with `hostile ingest: N cases, 0 panics, 0 hangs`.

mod ingest_common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ingest_common::{photos, s, samples, skipped, srcache_timed};

/// 96x96 HR at x2 is 48x48 LR: 3x3 patches of 16 at stride 16.
const PER_IMAGE: usize = 9;

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A PNG whose header claims `side`x`side` RGB8, with an empty zlib stream as its only data.
fn huge_png(side: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(&[kind, data].concat()).to_be_bytes());
        c
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A bad input: its file (relative to the folder), and the reason text each command must give.
struct Bad {
    name: &'static str,
    /// Expected in the `ingest patches` reason.
    patches: &'static str,
    /// Expected in the `ingest lr` reason; None when `ingest lr` can use the file.
    lr: Option<&'static str>,
}

const BAD: [Bad; 10] = [
    Bad { name: "zero.png", patches: "cannot decode image", lr: Some("cannot decode image") },
    Bad { name: "truncated.png", patches: "cannot decode image", lr: Some("cannot decode image") },
    Bad { name: "text.png", patches: "cannot decode image", lr: Some("cannot decode image") },
    Bad { name: "one.png", patches: "smaller than the scale 2", lr: Some("smaller than the scale 2") },
    Bad { name: "small.png", patches: "smaller than one 16x16 LR patch", lr: None },
    Bad { name: "huge.png", patches: "over the decode limit", lr: Some("over the decode limit") },
    Bad { name: "dangling.png", patches: "cannot read", lr: Some("cannot read") },
    Bad { name: "fifo.png", patches: "not a regular file", lr: Some("not a regular file") },
    Bad { name: "good_1.png", patches: "same stem as", lr: Some("same stem as") },
    Bad { name: "good_0.png", patches: "same stem as", lr: Some("same stem as") },
];

/// Usable images (each 96x96): (file, what makes it unusual). Stems are what the sample ids start with.
const GOOD: [(&str, &str); 9] = [
    ("dup/good_0.png", "first of two same-stem files (dup/ sorts before good_0.png)"),
    ("good_1.jpg", "first of two same-stem files (x.jpg sorts before x.png)"),
    ("good_2.png", "a plain photo, also reached through a symlink (listed once)"),
    ("jpeg_named.png", "a JPEG named .png"),
    ("deep16.png", "16-bit PNG"),
    ("gray.png", "grayscale PNG"),
    ("rgba.png", "RGBA PNG (alpha dropped, with a warning)"),
    ("folder.png/inner.png", "inside a directory named like an image"),
    ("bad\u{fffd}name.png", "a file name that is not UTF-8 (created as bad\\xffname.png)"),
];

/// Builds the hostile folder; returns its path.
fn build(root: &Path) -> PathBuf {
    let d = root.join("hostile");
    std::fs::create_dir_all(d.join("dup")).expect("mkdir");
    std::fs::create_dir_all(d.join("folder.png")).expect("mkdir");
    let src = photos();
    let crop = |k: usize, x: u32| image::imageops::crop_imm(&src[k % src.len()], x, 40, 96, 96).to_image();
    // Good ones.
    crop(0, 100).save(d.join("dup/good_0.png")).expect("save");
    crop(1, 10).save_with_format(d.join("good_1.jpg"), image::ImageFormat::Jpeg).expect("save");
    crop(2, 20).save(d.join("good_2.png")).expect("save");
    crop(3, 30).save_with_format(d.join("jpeg_named.png"), image::ImageFormat::Jpeg).expect("save");
    let c = crop(4, 40);
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(96, 96, |x, y| image::Rgb(c.get_pixel(x, y).0.map(|v| v as u16 * 257)))
        .save(d.join("deep16.png"))
        .expect("save");
    image::DynamicImage::ImageRgb8(crop(0, 50)).into_luma8().save(d.join("gray.png")).expect("save");
    image::DynamicImage::ImageRgb8(crop(1, 60)).into_rgba8().save(d.join("rgba.png")).expect("save");
    crop(2, 70).save(d.join("folder.png/inner.png")).expect("save");
    crop(3, 80).save(d.join(OsStr::from_bytes(b"bad\xffname.png"))).expect("save");
    // Bad ones.
    std::fs::write(d.join("zero.png"), b"").expect("write");
    let png = std::fs::read(srcache_tests::photos_dir().join("coffee.png")).expect("read");
    std::fs::write(d.join("truncated.png"), &png[..png.len() / 3]).expect("write");
    std::fs::write(d.join("text.png"), b"this is a text file, not a PNG\n").expect("write");
    image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3])).save(d.join("one.png")).expect("save");
    // 20x20: larger than the scale, smaller than a 16x16 patch at x2.
    image::imageops::crop_imm(&crop(4, 90), 0, 0, 20, 20).to_image().save(d.join("small.png")).expect("save");
    std::fs::write(d.join("huge.png"), huge_png(60_000)).expect("write");
    std::os::unix::fs::symlink("nowhere.png", d.join("dangling.png")).expect("symlink");
    let fifo = std::process::Command::new("mkfifo").arg(d.join("fifo.png")).status().expect("run mkfifo");
    assert!(fifo.success(), "mkfifo failed");
    crop(0, 110).save(d.join("good_0.png")).expect("save"); // same stem as dup/good_0.png, sorts after it
    crop(1, 120).save(d.join("good_1.png")).expect("save"); // same stem as good_1.jpg, sorts after it
                                                            // Links: a loop back to the folder, and a second name of good_2.png (sorts after it).
    std::os::unix::fs::symlink(".", d.join("loop")).expect("symlink");
    std::os::unix::fs::symlink("good_2.png", d.join("link_to_good_2.png")).expect("symlink");
    d
}

#[derive(Default)]
struct Tally {
    cases: usize,
    panics: Vec<String>,
    hangs: Vec<String>,
}

impl Tally {
    /// One run: None (and a hang or panic counted) when it hung or panicked.
    fn run(&mut self, label: &str, args: &[&str]) -> Option<ingest_common::Run> {
        match srcache_timed(args, &[], Duration::from_secs(60)) {
            Err(stderr) => {
                self.hangs.push(format!("{label}: {stderr}"));
                None
            }
            Ok(r) if r.panicked() => {
                self.panics.push(format!("{label}: {}", r.text()));
                None
            }
            Ok(r) => Some(r),
        }
    }
}

#[test]
fn hostile_inputs_are_skipped_or_refused_by_name_never_panic_or_hang() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = build(tmp.path());
    let mut t = Tally::default();

    // ingest patches, non-strict: every usable image's patches, every bad file named with its reason.
    let out = tmp.path().join("patches");
    let args = ["ingest", "patches", "--hr", s(&dir), "--out", s(&out), "--scale", "2", "--patch", "16", "--stride", "16", "--workers", "2"];
    if let Some(r) = t.run("patches", &args) {
        assert_eq!(r.code(), Some(0), "{}", r.text());
        assert_eq!(samples(&out), GOOD.len() * PER_IMAGE, "{}", r.text());
        let listed = skipped(&out);
        for b in &BAD {
            let line = r.stderr.lines().find(|l| l.contains(&format!("/{}", b.name)) && !l.contains("same file")).unwrap_or_default();
            assert!(line.contains(b.patches), "{}: want {:?} on its stderr line: {}", b.name, b.patches, r.text());
            let k = listed
                .iter()
                .find(|k| k.path.ends_with(b.name))
                .unwrap_or_else(|| panic!("{} not in the manifest's skipped list {listed:?}", b.name));
            assert!(k.reason.contains(b.patches), "{}: {}", b.name, k.reason);
            t.cases += 1;
        }
        assert_eq!(listed.len(), BAD.len(), "{listed:?}");
        // Same-stem reasons name both files.
        assert!(r.stderr.contains("good_0.png: same stem as") && r.stderr.contains("dup/good_0.png"), "{}", r.text());
        // Ids: every usable image exactly once (no loop duplicates, the link listed once), the non-UTF-8 one too.
        let rows = srcache_formats::Manifest::read(&srcache_formats::Manifest::path_in(&out)).expect("manifest");
        for (file, why) in GOOD {
            let stem = Path::new(file).file_stem().and_then(OsStr::to_str).expect("stem");
            let n = rows.iter().filter(|r| r.sample_id.starts_with(&format!("{stem}_"))).count();
            assert_eq!(n, PER_IMAGE, "{file} ({why}): {n} samples");
            t.cases += 1;
        }
        assert!(r.stderr.contains("rgba.png: alpha channel dropped"), "{}", r.text());
        assert!(r.stderr.contains("loop: directory already searched"), "{}", r.text());
        assert!(r.stderr.contains("link_to_good_2.png") && r.stderr.contains("listed once"), "{}", r.text());
        t.cases += 2; // the loop and the second name
    }

    // ingest lr, non-strict: an LR file per usable image (a 20x20 one too), the others named.
    let lr = tmp.path().join("lr");
    if let Some(r) = t.run("lr", &["ingest", "lr", "--hr", s(&dir), "--out", s(&lr), "--scale", "2"]) {
        assert_eq!(r.code(), Some(0), "{}", r.text());
        let lr_usable = BAD.iter().filter(|b| b.lr.is_none()).count();
        assert!(r.stdout.contains(&format!("wrote {} LR images", GOOD.len() + lr_usable)), "{}", r.text());
        for b in BAD.iter().filter(|b| b.lr.is_some()) {
            let line = r.stderr.lines().find(|l| l.contains(&format!("/{}", b.name))).unwrap_or_default();
            assert!(b.lr.is_some_and(|w| line.contains(w)), "{}: want {:?}: {}", b.name, b.lr, r.text());
        }
        // The non-UTF-8 stem keeps its bytes in the LR name.
        assert!(lr.join(OsStr::from_bytes(b"bad\xffnamex2.png")).exists());
        assert!(lr.join("smallx2.png").exists() && lr.join("innerx2.png").exists());
    }

    // Strict runs: a non-zero exit naming a bad file.
    let strict_out = tmp.path().join("strict");
    for (label, args) in [
        ("patches --strict", vec!["ingest", "patches", "--hr", s(&dir), "--out", s(&strict_out), "--scale", "2", "--patch", "16", "--strict"]),
        ("lr --strict", vec!["ingest", "lr", "--hr", s(&dir), "--out", s(&strict_out), "--scale", "2", "--strict"]),
    ] {
        if let Some(r) = t.run(label, &args) {
            assert_eq!(r.code(), Some(1), "{label}: {}", r.text());
            let err = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
            assert!(BAD.iter().any(|b| err.contains(b.name)), "{label}: error names no bad file: {}", r.text());
        }
    }

    println!("hostile ingest: {} cases, {} panics, {} hangs", t.cases, t.panics.len(), t.hangs.len());
    assert!(t.panics.is_empty(), "panics:\n{}", t.panics.join("\n"));
    assert!(t.hangs.is_empty(), "hangs:\n{}", t.hangs.join("\n"));
}
