//! The halo: each cached patch's expert outputs are the centre of the expert run on the patch plus a margin
//! of LR context (shifted inside the image at its borders), so they equal the same region of whole-image
//! inference. Real photo, real cache, the built-in lanczos3 expert (a 3-LR-pixel support: a bare patch's
//! border pixels differ from whole-image inference, an 8-pixel halo covers it). Seconds.
#![allow(clippy::field_reassign_with_default)]

use srcache_cache::{Builtin, CacheConfig, ExpertConfig, ExpertSource, InputConfig, NoProgress};
use srcache_formats::{attr, Dataset, Schema};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn photo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ingest/assets/photos/chelsea.png")
}

const PATCH: u32 = 24;
const SCALE: u32 = 4;

fn cache(hr_dir: &Path, out: &Path, halo: u32) -> Dataset {
    let cfg = CacheConfig {
        input: InputConfig { hr_dir: hr_dir.to_path_buf(), scale: SCALE, patch: PATCH, stride: Some(PATCH), halo, ..Default::default() },
        experts: vec![ExpertConfig::builtin("lanczos3", Builtin::Lanczos3)],
        out: out.to_path_buf(),
        devices: "cpu".into(),
        batch: 8,
        ..Default::default()
    };
    srcache_cache::run(&cfg, &NoProgress).expect("cache");
    Dataset::open(out).expect("open")
}

/// Whole-image inference of the expert: (sr u8 CHW of the whole image, features CHW f32, width, height).
fn whole_image(lr: &image::RgbImage) -> (Vec<u8>, Vec<f32>, usize, usize) {
    let e = srcache_cache::Expert::load("lanczos3", &ExpertSource::Builtin(Builtin::Lanczos3), SCALE, Device::Cpu, PATCH as usize).expect("load");
    let x = srcache_experts::image::image_to_tensor(lr, Device::Cpu).expect("tensor");
    let _g = tch::no_grad_guard();
    let (sr, feat) = e.forward(&x).expect("forward");
    let sr: Vec<u8> = Vec::<u8>::try_from((sr * 255.0).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).flatten(0, -1)).expect("sr bytes");
    let feat: Vec<f32> = Vec::<f32>::try_from(feat.expect("features").to_kind(Kind::Float).flatten(0, -1)).expect("feat");
    (sr, feat, lr.width() as usize, lr.height() as usize)
}

/// Largest |stored − whole-image| over every sample: (sr in u8 levels, features).
fn worst(ds: &Dataset, whole: &(Vec<u8>, Vec<f32>, usize, usize)) -> (u8, f32) {
    let (sr, feat, w, h) = whole;
    let (sw, sh) = (w * SCALE as usize, h * SCALE as usize);
    let p = PATCH as usize;
    let hp = p * SCALE as usize;
    let fc = feat.len() / (w * h);
    let (mut d_sr, mut d_feat) = (0u8, 0f32);
    for (g, row) in ds.manifest().iter().enumerate() {
        let (shard, i) = ds.sample(g).expect("sample");
        let stored = shard.tensor(i, "sr/lanczos3").expect("sr").to_f32().expect("decode");
        let (x0, y0) = (row.x as usize * SCALE as usize, row.y as usize * SCALE as usize);
        for c in 0..3 {
            for y in 0..hp {
                for x in 0..hp {
                    let a = stored[(c * hp + y) * hp + x] as u8;
                    let b = sr[(c * sh + y0 + y) * sw + x0 + x];
                    d_sr = d_sr.max(a.abs_diff(b));
                }
            }
        }
        let stored = shard.tensor(i, "feat/lanczos3").expect("feat").to_f32().expect("decode");
        for c in 0..fc {
            for y in 0..p {
                for x in 0..p {
                    let a = stored[(c * p + y) * p + x];
                    let b = feat[(c * h + row.y as usize + y) * w + row.x as usize + x];
                    d_feat = d_feat.max((a - b).abs());
                }
            }
        }
    }
    (d_sr, d_feat)
}

#[test]
fn cached_patches_with_a_halo_equal_the_centre_of_whole_image_inference() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hr_dir = tmp.path().join("hr");
    std::fs::create_dir_all(&hr_dir).expect("mkdir");
    std::fs::copy(photo(), hr_dir.join("chelsea.png")).expect("copy");
    let hr = image::open(photo()).expect("photo").to_rgb8();
    let (_, lr) = srcache_ingest::resize::bicubic_lr(&hr, SCALE);
    // The LR is not a multiple of the patch on either axis: the grid's last patches (flush with the border)
    // sit at offsets other than (halo, halo) in their windows, which the comparison covers too.
    assert!(lr.width() % PATCH != 0 && lr.height() % PATCH != 0, "{:?}", lr.dimensions());
    let whole = whole_image(&lr);

    let with = cache(&hr_dir, &tmp.path().join("halo8"), 8);
    assert_eq!(with.schema().and_then(|s| s.attr(attr::HALO)), Some("8"));
    assert_eq!(with.schema().map(Schema::halo), Some(8));
    let (d_sr, d_feat) = worst(&with, &whole);
    // u8 rounding of the same arithmetic: at most one level apart; f16 storage of the features.
    assert!(d_sr <= 1, "halo 8: a cached sr differs from whole-image inference by {d_sr} levels");
    assert!(d_feat < 0.02, "halo 8: cached features differ from whole-image inference by {d_feat}");

    // Without the halo the patches' borders differ: what the halo is for (and proof the check has teeth).
    let bare = cache(&hr_dir, &tmp.path().join("halo0"), 0);
    assert_eq!(bare.schema().map(Schema::halo), Some(0));
    let (d_sr0, _) = worst(&bare, &whole);
    assert!(d_sr0 > 4, "halo 0: expected border artefacts, worst difference only {d_sr0}");
    assert_eq!(with.len(), bare.len(), "the halo changes what experts see, not which patches are cached");
}

#[test]
fn a_schema_without_the_halo_attr_reads_as_no_halo() {
    // Caches made before the attr existed: their experts saw bare patches.
    let mut s = Schema::new(Vec::new());
    assert_eq!(s.halo(), 0);
    s.attrs.insert(attr::HALO.to_string(), "16".into());
    assert_eq!(s.halo(), 16);
}

#[test]
fn heads_start_at_the_best_expert_on_the_training_samples() {
    // Two real experts over a real photo: "best" (the default) resolves to the higher mean manifest PSNR on the
    // training samples, and the run's saved config names it.
    let tmp = tempfile::tempdir().expect("tmp");
    let hr_dir = tmp.path().join("hr");
    std::fs::create_dir_all(&hr_dir).expect("mkdir");
    std::fs::copy(photo(), hr_dir.join("chelsea.png")).expect("copy");
    let out = tmp.path().join("cache");
    let cfg = CacheConfig {
        input: InputConfig { hr_dir, scale: SCALE, patch: PATCH, stride: Some(PATCH), ..Default::default() },
        experts: vec![ExpertConfig::builtin("bicubic", Builtin::Bicubic), ExpertConfig::builtin("lanczos3", Builtin::Lanczos3)],
        out: out.clone(),
        devices: "cpu".into(),
        batch: 16,
        ..Default::default()
    };
    srcache_cache::run(&cfg, &NoProgress).expect("cache");
    let ds = Dataset::open(&out).expect("open");
    let names = vec!["bicubic".to_string(), "lanczos3".to_string()];
    let all: Vec<usize> = (0..ds.len()).collect();
    let m = srcache_trainer::train::mean_psnr(&ds, &all, &names);
    let want = if m[0] > m[1] { "bicubic" } else { "lanczos3" };
    assert_eq!(srcache_trainer::train::best_expert(&ds, &all, &names).map(|i| names[i].as_str()), Some(want), "{m:?}");
    let mut t = srcache_trainer::TrainConfig::default();
    (t.device, t.threads, t.steps, t.val_fraction, t.export, t.tensorboard) = ("cpu".into(), Some(2), 1, 0.0, false, false);
    (t.model.width, t.model.blocks, t.loader.batch_size, t.loader.workers) = (8, 1, 4, 1);
    let run = tmp.path().join("run");
    let s = srcache_trainer::train(&t, &out, &run, false, &mut |_| {}).expect("train");
    assert_eq!(s.base_expert, want);
    let saved = srcache_trainer::TrainConfig::from_toml_file(&run.join("config.toml")).expect("config");
    assert_eq!(saved.model.delta_expert, srcache_trainer::config::ExpertRef::Name(want.into()));
}
