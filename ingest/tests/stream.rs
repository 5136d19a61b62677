//! The ingest stream on real files: deterministic order whatever the worker count, DIV2K LR pairing,
//! and bad inputs (truncated PNG, non-image, image smaller than a patch, wrong LR size) skipped with a
//! message naming the file — or a hard error in strict mode.

use std::path::{Path, PathBuf};

use srcache_ingest::{resize, stream, IngestConfig, PatchConfig, ScanConfig};

fn photos() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/photos")
}

fn copy_photo(name: &str, dst: &Path) {
    std::fs::copy(photos().join(name), dst).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn cfg(hr: &Path, lr: Option<&Path>, workers: usize, strict: bool) -> IngestConfig {
    IngestConfig {
        scan: ScanConfig { hr_dir: hr.to_path_buf(), lr_dir: lr.map(Path::to_path_buf), scale: 4 },
        patch: PatchConfig { size: 24, stride: Some(20), flat_threshold: None },
        workers,
        strict,
        ..Default::default()
    }
}

#[test]
fn order_is_deterministic_and_lr_is_matlab_bicubic() {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in ["chelsea.png", "coffee.png", "astronaut.png"] {
        copy_photo(n, &dir.path().join(n));
    }
    let ids = |workers| -> Vec<String> { stream(&cfg(dir.path(), None, workers, true)).expect("stream").map(|s| s.expect("sample").id).collect() };
    let one = ids(1);
    assert!(one.len() > 100);
    assert_eq!(one, ids(3));
    assert!(one[0].starts_with("astronaut_0_0_clean"));

    // Every patch is the MATLAB-bicubic LR of its HR patch's source, cut at the right box.
    let s = stream(&cfg(dir.path(), None, 2, true)).expect("stream").nth(5).expect("sample").expect("ok");
    let hr = image::open(dir.path().join("astronaut.png")).expect("open").into_rgb8();
    let (hr, lr) = resize::bicubic_lr(&hr, 4);
    let b = s.patch;
    assert_eq!(s.lr, image::imageops::crop_imm(&lr, b.x, b.y, b.w, b.h).to_image());
    assert_eq!(s.hr, image::imageops::crop_imm(&hr, b.x * 4, b.y * 4, b.w * 4, b.h * 4).to_image());
}

#[test]
fn bad_files_are_skipped_with_their_names_or_fail_in_strict_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hr, lr) = (dir.path().join("HR"), dir.path().join("LR"));
    std::fs::create_dir_all(&hr).expect("mkdir");
    std::fs::create_dir_all(&lr).expect("mkdir");
    // A good pair in DIV2K naming.
    copy_photo("chelsea.png", &hr.join("0001.png"));
    let good = image::open(hr.join("0001.png")).expect("open").into_rgb8();
    resize::bicubic_lr(&good, 4).1.save(lr.join("0001x4.png")).expect("save");
    // Truncated PNG.
    let bytes = std::fs::read(photos().join("coffee.png")).expect("read");
    std::fs::write(hr.join("0002.png"), &bytes[..bytes.len() / 3]).expect("write");
    resize::bicubic_lr(&good, 4).1.save(lr.join("0002x4.png")).expect("save");
    // Not an image at all.
    std::fs::write(hr.join("0003.png"), b"this is not a png").expect("write");
    resize::bicubic_lr(&good, 4).1.save(lr.join("0003x4.png")).expect("save");
    // Smaller than one patch.
    let tiny = image::RgbImage::from_pixel(40, 40, image::Rgb([9, 9, 9]));
    tiny.save(hr.join("0004.png")).expect("save");
    resize::bicubic_lr(&tiny, 4).1.save(lr.join("0004x4.png")).expect("save");
    // Wrong LR size.
    copy_photo("astronaut.png", &hr.join("0005.png"));
    image::RgbImage::new(50, 50).save(lr.join("0005x4.png")).expect("save");
    // No LR partner.
    copy_photo("rocket.png", &hr.join("0006.png"));

    let mut s = stream(&cfg(&hr, Some(&lr), 2, false)).expect("stream");
    let samples: Vec<_> = s.by_ref().collect::<Result<_, _>>().expect("non-strict never errors");
    assert!(!samples.is_empty() && samples.iter().all(|x| x.id.starts_with("0001_")));
    let skipped = s.skipped();
    let reason = |stem: &str| -> String {
        skipped
            .iter()
            .find(|k| k.path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(stem)))
            .map(|k| k.reason.clone())
            .unwrap_or_else(|| panic!("{stem} not reported as skipped: {skipped:?}"))
    };
    assert!(reason("0002").contains("0002.png") && reason("0002").contains("cannot decode"));
    assert!(reason("0003").contains("0003.png"));
    assert!(reason("0004").contains("smaller than"));
    assert!(reason("0005").contains("0005x4.png") && reason("0005").contains("expected 128x128"));
    assert!(reason("0006").contains("no LR image"));
    assert_eq!(skipped.len(), 5);

    // The ingest-only dataset of the same folder: the good pair's patches as CHW u8 shards, and the skipped
    // files listed in the manifest's metadata, read back through `formats`.
    let out = dir.path().join("patches");
    let opts = srcache_ingest::PatchShardOptions::default();
    let sum = srcache_ingest::write_patch_dataset(&cfg(&hr, Some(&lr), 2, false), &out, &opts, &|_, _| {}).expect("ingest");
    assert_eq!(sum.written as usize, samples.len());
    assert_eq!(sum.skipped.len(), 5);
    let ds = srcache_formats::Dataset::open(&out).expect("open dataset");
    assert_eq!(ds.len(), samples.len());
    let (shard, i) = ds.sample(3).expect("sample 3");
    assert_eq!(shard.meta(i).expect("meta").id, samples[3].id);
    assert_eq!(shard.tensor(i, "hr").expect("hr").decode().expect("decode"), srcache_ingest::shards::to_chw(&samples[3].hr));
    let meta = srcache_formats::Manifest::read_metadata(&srcache_formats::Manifest::path_in(&out)).expect("metadata");
    let listed: Vec<srcache_ingest::Skipped> = serde_json::from_str(&meta[srcache_formats::SKIPPED_KEY]).expect("skipped json");
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().any(|k| k.path.ends_with("0002.png") && k.reason.contains("cannot decode")));

    // Strict: the first bad file stops the run with its name.
    let err = match stream(&cfg(&hr, Some(&lr), 2, true)) {
        Err(e) => e.to_string(),
        Ok(s) => s.filter_map(Result::err).map(|e| e.to_string()).next().expect("strict error"),
    };
    assert!(err.contains("0006") || err.contains("0002"), "{err}");
}
