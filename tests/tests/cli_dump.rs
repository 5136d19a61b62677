//! `srcache dump` draws what is stored: on caches made by the real binary with built-in experts — the default
//! storage (sr as u8 `residual_u8`) and `--lossless` (float sr) — every expert's SR tile in the drawn sheet
//! equals the stored output pixel for pixel (PNG and the SVG twin's embedded tile), `--index N` draws the
//! manifest's row N, and the error tiles are errors (dark where the expert is right), not the picture.
//! Also `stats --histogram`'s PNG + SVG. Needs `cargo build --release` first (CI does it).

use std::path::Path;
use std::process::{Command, Output};

use srcache_formats::{DType, Dataset};
use srcache_tests::{photos_dir, srcache_bin};

#[path = "../../trainer/tests/common/svg.rs"]
mod svg;

fn srcache(args: &[&str]) -> Output {
    Command::new(srcache_bin()).args(args).output().expect("run srcache")
}

fn ok(args: &[&str]) -> String {
    let o = srcache(args);
    assert!(o.status.success(), "srcache {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// The stored `sr/<e>` of sample `g` as the u8 RGB picture it stands for (u8: as stored; floats: rounded
/// from [0,1]), nearest-neighbour enlarged by `zoom`.
fn stored_picture(ds: &Dataset, g: usize, name: &str, zoom: u32) -> image::RgbImage {
    let (shard, i) = ds.sample(g).expect("sample");
    let t = shard.tensor(i, name).expect("tensor");
    let (dtype, shape) = (t.spec().dtype, t.spec().shape.clone());
    let v = t.to_f32().expect("decode");
    let (h, w) = (shape[1], shape[2]);
    let px = |c: usize, y: usize, x: usize| {
        let f = v[(c * h + y) * w + x];
        if dtype == DType::U8 {
            f as u8
        } else {
            (f.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    image::RgbImage::from_fn(w as u32 * zoom, h as u32 * zoom, |x, y| {
        let (x, y) = ((x / zoom) as usize, (y / zoom) as usize);
        image::Rgb([px(0, y, x), px(1, y, x), px(2, y, x)])
    })
}

fn check_dump(cache: &Path, out: &Path, lossless: bool) {
    let ds = Dataset::open(cache).expect("open cache");
    let schema = ds.schema().expect("schema").clone();
    let sr_dtype = schema.tensors.iter().find(|t| t.name == "sr/bicubic").expect("sr/bicubic").dtype;
    assert_eq!(sr_dtype == DType::U8, !lossless, "the default cache stores sr as u8, --lossless as floats");
    let g = ds.len() / 2;
    let id = ds.manifest()[g].sample_id.clone();
    let by_index = out.join("by_index.png");
    let by_id = out.join("by_id.png");
    let said = ok(&["dump", p(cache), "--index", &g.to_string(), "--out", p(&by_index)]);
    assert!(said.contains(&id), "--index {g} drew another sample: {said}");
    ok(&["dump", p(cache), "--sample", &id, "--out", p(&by_id)]);
    let img = image::open(&by_index).expect("sheet decodes").to_rgb8();
    assert_eq!(img, image::open(&by_id).expect("decodes").to_rgb8(), "--index and --sample draw the same sheet");
    let text = std::fs::read_to_string(by_index.with_extension("svg")).expect("svg twin");
    let els = svg::parse(&text).unwrap_or_else(|e| panic!("dump SVG is not well-formed: {e}"));
    let hr_w = schema.tensors.iter().find(|t| t.name == "hr").expect("hr").shape[2] as u32;
    let tiles: Vec<&svg::Element> = els.iter().filter(|e| e.name == "image").collect();
    let zoom = tiles[0].num("width") as u32 / hr_w;
    assert!(zoom >= 1);
    let experts = ["bicubic", "lanczos"];
    for e in experts {
        // Each image element's <title> follows it in document order.
        let pos = els.iter().position(|t| t.name == "title" && t.text.starts_with(&format!("{e} "))).unwrap_or_else(|| panic!("no tile titled {e}"));
        let tile = els[..pos].iter().rev().find(|t| t.name == "image").expect("image of the title");
        let (x, y, w, h) = (tile.num("x") as u32, tile.num("y") as u32, tile.num("width") as u32, tile.num("height") as u32);
        let want = stored_picture(&ds, g, &format!("sr/{e}"), zoom);
        assert_eq!((w, h), want.dimensions());
        let drawn = image::imageops::crop_imm(&img, x, y, w, h).to_image();
        let differing = drawn.pixels().zip(want.pixels()).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{e}: {differing} of {} drawn SR pixels differ from the stored output (lossless={lossless})", w * h);
        let data = tile.attr("href").strip_prefix("data:image/png;base64,").expect("embedded PNG");
        assert_eq!(image::load_from_memory(&svg::decode_base64(data)).expect("decodes").to_rgb8(), want, "{e}: SVG tile");
        // The error tile beside it: its scale (the 99th percentile of |SR-HR| in 8-bit levels) is an error's,
        // a few levels for these experts, not the picture's brightness (the bug drew "0-218").
        let next = els[pos + 1..].iter().find(|t| t.name == "title").expect("error tile title");
        let level: f64 =
            next.text.trim().strip_prefix("|SR−HR| 0–").and_then(|r| r.strip_suffix("/255")).and_then(|v| v.parse().ok()).expect("error scale");
        assert!(level > 0.0 && level < 80.0, "{e}: error scale {level}/255");
    }
}

#[test]
fn dump_draws_the_stored_sr_on_default_and_lossless_caches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr = tmp.path().join("hr");
    std::fs::create_dir_all(&hr).expect("mkdir");
    std::fs::copy(photos_dir().join("coffee.png"), hr.join("coffee.png")).expect("photo");
    for (name, lossless) in [("default", false), ("lossless", true)] {
        let cache = tmp.path().join(name);
        let mut args = vec!["cache", "--hr", p(&hr), "--scale", "2", "--patch", "24", "--stride", "48", "--out", p(&cache), "--quiet"];
        args.extend(["--expert", "bicubic=builtin:bicubic", "--expert", "lanczos=builtin:lanczos3"]);
        if lossless {
            args.push("--lossless");
        }
        ok(&args);
        let out = tmp.path().join(format!("{name}_out"));
        std::fs::create_dir_all(&out).expect("mkdir");
        check_dump(&cache, &out, lossless);
        if !lossless {
            let o = srcache(&["dump", p(&cache), "--index", "100000", "--out", p(&out.join("x.png"))]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains("out of range"), "{err}");
            let hist = out.join("hist.png");
            ok(&["stats", p(&cache), "--samples", "4", "--histogram", p(&hist)]);
            let img = image::open(&hist).expect("histogram decodes");
            assert_eq!(img.width(), 640);
            let els = svg::parse(&std::fs::read_to_string(hist.with_extension("svg")).expect("svg")).expect("well-formed");
            let texts: Vec<&str> = els.iter().filter(|e| e.name == "text").map(|e| e.text.trim()).collect();
            assert!(texts.contains(&"PSNR (dB, Y channel)") && texts.contains(&"Samples"), "{texts:?}");
        }
    }
}
