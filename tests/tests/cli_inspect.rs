//! End-to-end: `srcache inspect / verify / stats / dump / export` run as the real binary on real shards
//! built from the shipped photos. Needs `cargo build --release` first (CI does it before the tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::f16;
use image::imageops::FilterType;
use srcache_formats::{Codec, DType, DatasetOptions, DatasetWriter, Manifest, PatchBox, SampleMeta, Schema, TensorSpec, MANIFEST_FILE};
use srcache_tests::{photos_dir, srcache_bin, venv_python};

const LR: usize = 16;
const HR: usize = 32;
const FEAT_C: usize = 4;
const PHOTOS: [&str; 2] = ["astronaut.png", "coffee.png"];
const PATCHES_PER_PHOTO: usize = 3;

fn chw(img: &image::RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0u8; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[c * w * h + y as usize * w + x as usize] = p.0[c];
        }
    }
    out
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
}

fn psnr(a: &[f32], b: &[f32]) -> f32 {
    let mse = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32;
    10.0 * (1.0 / mse.max(1e-10)).log10()
}

/// Builds a 2-shard dataset: per sample lr, hr, two "experts" (nearest and a Catmull-Rom upscale of LR)
/// and features for the second one (AffineU8, lossy).
fn build_dataset(dir: &Path) -> Vec<String> {
    let mut schema = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, LR, LR], Codec::ZSTD),
        TensorSpec::new("hr", DType::U8, &[3, HR, HR], Codec::Raw),
        TensorSpec::new("sr/nearest", DType::F16, &[3, HR, HR], Codec::SHUFFLE_ZSTD),
        TensorSpec::new("sr/cubic", DType::F16, &[3, HR, HR], Codec::SHUFFLE_ZSTD),
        TensorSpec::new("feat/cubic", DType::F16, &[FEAT_C, LR, LR], Codec::AffineU8),
    ]);
    schema.attrs.insert("scale".into(), "2".into());
    // Small target so the 6 samples land in 2 shards.
    let opts = DatasetOptions { target_shard_bytes: 20_000 };
    let (mut w, _) = DatasetWriter::create_or_resume(dir, schema, opts).expect("writer");
    let mut ids = Vec::new();
    for name in PHOTOS {
        let photo = image::open(photos_dir().join(name)).expect("photo").to_rgb8();
        for k in 0..PATCHES_PER_PHOTO {
            let (x, y) = (40 + 70 * k as u32, 60 + 50 * k as u32);
            let hr = image::imageops::crop_imm(&photo, 2 * x, 2 * y, HR as u32, HR as u32).to_image();
            let lr = image::imageops::resize(&hr, LR as u32, LR as u32, FilterType::Triangle);
            let to_f = |img: &image::RgbImage| chw(img).iter().map(|&v| v as f32 / 255.0).collect::<Vec<f32>>();
            let near = to_f(&image::imageops::resize(&lr, HR as u32, HR as u32, FilterType::Nearest));
            let cubic = to_f(&image::imageops::resize(&lr, HR as u32, HR as u32, FilterType::CatmullRom));
            let hrf = to_f(&hr);
            let lrf = to_f(&lr);
            let mut feat = Vec::with_capacity(FEAT_C * LR * LR);
            feat.extend_from_slice(&lrf);
            feat.extend(lrf[..LR * LR].iter().map(|v| v * v - 0.3));
            let id = format!("{}_{k:03}", name.trim_end_matches(".png"));
            let mut meta = SampleMeta {
                id: id.clone(),
                source: name.into(),
                patch: PatchBox { x, y, w: LR as u32, h: LR as u32 },
                variant: "bicubic_x2".into(),
                ..Default::default()
            };
            meta.psnr.insert("nearest".into(), psnr(&near, &hrf));
            meta.psnr.insert("cubic".into(), psnr(&cubic, &hrf));
            let raws = [chw(&lr), chw(&hr), f16_bytes(&near), f16_bytes(&cubic), f16_bytes(&feat)];
            let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
            w.write(&meta, &refs).expect("write sample");
            ids.push(id);
        }
    }
    w.finish().expect("finish");
    ids
}

fn srcache(args: &[&str]) -> Output {
    Command::new(srcache_bin()).args(args).output().expect("run srcache")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn shards(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "srs")).collect();
    v.sort();
    v
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn inspect_json_describes_the_dataset() {
    let tmp = tempfile::tempdir().expect("tmp");
    build_dataset(tmp.path());
    assert!(shards(tmp.path()).len() >= 2, "test wants a multi-shard dataset");
    let o = srcache(&["inspect", s(tmp.path()), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json is JSON");
    assert_eq!(j["samples"], 6);
    let t = j["tensors"].as_array().expect("tensors");
    assert_eq!(t.len(), 5);
    let hr = t.iter().find(|t| t["name"] == "hr").expect("hr");
    assert_eq!(hr["raw_bytes"], 6 * 3 * HR * HR);
    assert_eq!(hr["codec"], "raw");
    let feat = t.iter().find(|t| t["name"] == "feat/cubic").expect("feat");
    let err = feat["max_quant_error"].as_f64().expect("affine error bound reported");
    assert!(err > 0.0 && err < 0.01, "{err}");
    assert!(feat["ratio"].as_f64().expect("ratio") > 1.5);
    let o = srcache(&["inspect", s(&shards(tmp.path())[0])]);
    assert!(o.status.success() && text(&o).contains("sr/nearest"), "{}", text(&o));
}

#[test]
fn verify_catches_flipped_payload_and_manifest_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ids = build_dataset(tmp.path());
    let o = srcache(&["verify", s(tmp.path())]);
    assert!(o.status.success(), "clean dataset must verify: {}", text(&o));
    assert!(text(&o).contains("0 problem(s)"));

    // Payload: flip a byte inside the raw HR bytes of the second sample of the first shard.
    let shard0 = &shards(tmp.path())[0];
    let mut bytes = std::fs::read(shard0).expect("read shard");
    let photo = image::open(photos_dir().join(PHOTOS[0])).expect("photo").to_rgb8();
    let hr1 = chw(&image::imageops::crop_imm(&photo, 2 * 110, 2 * 110, HR as u32, HR as u32).to_image());
    let at = bytes.windows(hr1.len()).position(|w| w == hr1.as_slice()).expect("hr payload in shard") + 100;
    bytes[at] ^= 0x10;
    std::fs::write(shard0, &bytes).expect("write");
    let o = srcache(&["verify", s(tmp.path())]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("shard-00000.srs") && out.contains("sample 1") && out.contains("\"hr\""), "{out}");
    bytes[at] ^= 0x10;
    std::fs::write(shard0, &bytes).expect("restore");

    // Manifest, byte level: a flipped byte inside the compressed data of the sample_id column (a flip in
    // Parquet's optional statistics would be harmless to readers, so aim at the data itself).
    let mpath = tmp.path().join(MANIFEST_FILE);
    let orig = std::fs::read(&mpath).expect("manifest");
    let mut m = orig.clone();
    let py = "import sys, pyarrow.parquet as pq\nc = pq.ParquetFile(sys.argv[1]).metadata.row_group(0).column(0)\n\
              s = c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset\nprint(s + c.total_compressed_size - 3)";
    let o = Command::new(venv_python()).args(["-c", py, s(&mpath)]).output().expect("python");
    let mid: usize = String::from_utf8_lossy(&o.stdout).trim().parse().expect("offset from pyarrow");
    m[mid] ^= 0x01;
    std::fs::write(&mpath, &m).expect("write");
    let o = srcache(&["verify", s(tmp.path())]);
    assert!(!o.status.success(), "flipped manifest byte at {mid} not caught: {}", text(&o));
    assert!(text(&o).contains("manifest.parquet"), "{}", text(&o));

    // Manifest, row level: a well-formed manifest that disagrees with the shards names shard and sample.
    std::fs::write(&mpath, &orig).expect("restore");
    let mut rows = Manifest::read(&mpath).expect("rows");
    *rows[4].psnr.get_mut("cubic").expect("psnr") += 0.5;
    Manifest::write(&mpath, &rows).expect("rewrite");
    let o = srcache(&["verify", s(tmp.path())]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains(&rows[4].shard) && out.contains(&ids[4]) && out.contains("psnr"), "{out}");
}

#[test]
fn stats_reports_experts_and_draws_histogram() {
    let tmp = tempfile::tempdir().expect("tmp");
    build_dataset(tmp.path());
    let png = tmp.path().join("hist.png");
    let o = srcache(&["stats", s(tmp.path()), "--histogram", s(&png)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let rows = Manifest::read(&tmp.path().join(MANIFEST_FILE)).expect("rows");
    let cubic_best = rows.iter().filter(|r| r.psnr["cubic"] > r.psnr["nearest"]).count();
    let line = out.lines().find(|l| l.starts_with("cubic ")).expect("cubic line");
    assert!(line.split_whitespace().nth(5) == Some(&cubic_best.to_string()), "{line} vs {cubic_best}");
    assert!(out.contains("feat/cubic"));
    let img = image::open(&png).expect("histogram png");
    assert_eq!((img.width(), img.height()), (640, 2 * 220), "one 640x220 panel per expert");
}

#[test]
fn dump_writes_contact_sheet() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ids = build_dataset(tmp.path());
    let png = tmp.path().join("sheet.png");
    let o = srcache(&["dump", s(tmp.path()), "--sample", &ids[2], "--out", s(&png)]);
    assert!(o.status.success(), "{}", text(&o));
    let img = image::open(&png).expect("png").to_rgb8();
    // 4 columns of 128-px tiles (32-px HR zoomed x4), rows: LR/HR + 2 experts; gaps 4, label bars 18.
    assert_eq!((img.width(), img.height()), (4 * 128 + 5 * 4, 3 * (128 + 18) + 4 * 4));
    if let Ok(keep) = std::env::var("SRCACHE_KEEP_DUMP") {
        std::fs::copy(&png, keep).expect("keep");
    }
    let o = srcache(&["dump", s(tmp.path()), "--sample", "nope", "--out", s(&png)]);
    assert!(!o.status.success());
}

#[test]
fn export_npz_safetensors_csv_read_back_in_python() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ids = build_dataset(tmp.path());
    let npz = tmp.path().join("one.npz");
    let st = tmp.path().join("one.safetensors");
    let snpz = tmp.path().join("shard.npz");
    let csv = tmp.path().join("m.csv");
    for args in [
        vec!["export", s(tmp.path()), "--sample", &ids[1], "--format", "npz", "--out", s(&npz)],
        vec!["export", s(tmp.path()), "--sample", &ids[1], "--format", "safetensors", "--out", s(&st)],
        vec!["export", s(tmp.path()), "--shard", "0", "--out", s(&snpz), "--compress"],
        vec!["export", s(tmp.path()), "--manifest-csv", s(&csv)],
    ] {
        let o = srcache(&args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
    // Reference values straight from the shard, written as raw .bin files for numpy to compare against.
    let (shard, i) = {
        let sh = srcache_formats::Shard::open(&shards(tmp.path())[0]).expect("open");
        let i = sh.metas().iter().position(|m| m.id == ids[1]).expect("id");
        (sh, i)
    };
    let n0 = shard.len();
    for t in &shard.schema().tensors {
        let raw = shard.tensor(i, &t.name).expect("t").decode().expect("decode");
        std::fs::write(tmp.path().join(format!("{}.bin", t.name.replace('/', "_"))), raw).expect("bin");
    }
    let script = r#"
import sys, os, json, numpy as np
from safetensors.numpy import load_file
d, n0 = sys.argv[1], int(sys.argv[2])
spec = {"lr": ("u1", (3, 16, 16)), "hr": ("u1", (3, 32, 32)), "sr/nearest": ("<f2", (3, 32, 32)),
        "sr/cubic": ("<f2", (3, 32, 32)), "feat/cubic": ("<f2", (4, 16, 16))}
z = np.load(os.path.join(d, "one.npz"))
st = load_file(os.path.join(d, "one.safetensors"))
sz = np.load(os.path.join(d, "shard.npz"))
for k, (dt, shape) in spec.items():
    ref = np.frombuffer(open(os.path.join(d, k.replace("/", "_") + ".bin"), "rb").read(), dtype=dt).reshape(shape)
    assert z[k].dtype == ref.dtype and z[k].shape == shape, (k, z[k].dtype, z[k].shape)
    assert np.array_equal(z[k], ref), k
    assert np.array_equal(st[k], ref), k
    assert sz[k].shape == (n0,) + shape, (k, sz[k].shape)
assert len(sz["sample_id"]) == n0
import csv
rows = list(csv.DictReader(open(os.path.join(d, "m.csv"))))
assert len(rows) == 6 and "psnr_cubic" in rows[0], rows[0]
print("python ok", n0)
"#;
    let o = Command::new(venv_python()).args(["-c", script, s(tmp.path()), &n0.to_string()]).output().expect("python");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("python ok"));
}

#[test]
fn ingest_patches_skips_bad_files_lists_them_in_the_manifest_and_fails_in_strict_mode() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("HR");
    std::fs::create_dir_all(&hr).expect("mkdir");
    for p in PHOTOS {
        std::fs::copy(photos_dir().join(p), hr.join(p)).expect("copy photo");
    }
    let bytes = std::fs::read(photos_dir().join("chelsea.png")).expect("read");
    std::fs::write(hr.join("broken.png"), &bytes[..bytes.len() / 4]).expect("truncate");
    let out = tmp.path().join("patches");
    let (hr_s, out_s) = (hr.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let o = srcache(&["ingest", "patches", "--hr", hr_s, "--out", out_s, "--patch", "32", "--stride", "32", "--codec", "raw"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("broken.png") && text(&o).contains("cannot decode"), "{}", text(&o));
    let o = srcache(&["inspect", out_s]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("1 input file(s) skipped") && t.contains("broken.png"), "{t}");
    assert!(t.contains("raw"), "{t}");
    // Verify reads every checksum of what was written.
    let o = srcache(&["verify", out_s]);
    assert!(o.status.success(), "{}", text(&o));

    let strict_out = tmp.path().join("strict");
    let o = srcache(&["ingest", "patches", "--hr", hr_s, "--out", strict_out.to_str().expect("utf8"), "--strict"]);
    assert!(!o.status.success(), "strict run should fail");
    assert!(text(&o).contains("broken.png"), "{}", text(&o));
}
