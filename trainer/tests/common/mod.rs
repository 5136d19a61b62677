#![allow(dead_code)]
//! Real shards written with srcache-formats: hr is the nearest-neighbour upsample of lr and every sr/feat is a
//! known function of them, so the loader's crops and dihedral transforms can be checked tensor against tensor.

use half::f16;
use rand::{Rng, SeedableRng};
use srcache_formats::{Codec, DType, DatasetOptions, DatasetWriter, PatchBox, SampleMeta, Schema, TensorSpec};
use std::path::Path;

pub const EXPERTS: [(&str, usize); 3] = [("a", 4), ("b", 0), ("c", 6)];

pub fn sr_gain(k: usize) -> f32 {
    1.0 - 0.1 * k as f32
}
pub fn feat_gain(ch: usize) -> f32 {
    (1 + ch % 4) as f32 / 4.0
}

/// n samples of LR h×h at `scale`, spread over n/4 source images, in shards of ~4 samples.
pub fn make_dataset(dir: &Path, n: usize, h: usize, scale: usize) {
    let hh = h * scale;
    let mut specs =
        vec![TensorSpec::new("lr", DType::U8, &[3, h, h], Codec::Raw), TensorSpec::new("hr", DType::U8, &[3, hh, hh], Codec::Zstd { level: 1 })];
    for (k, (e, c)) in EXPERTS.iter().enumerate() {
        // Mix codecs: zero-copy raw and decoded paths both get exercised.
        let codec = if k == 1 { Codec::ShuffleZstd { level: 1 } } else { Codec::Raw };
        specs.push(TensorSpec::new(format!("sr/{e}"), DType::F16, &[3, hh, hh], codec));
        if *c > 0 {
            specs.push(TensorSpec::new(format!("feat/{e}"), DType::F16, &[*c, h, h], Codec::Zstd { level: 1 }));
        }
    }
    let mut schema = Schema::new(specs);
    schema.attrs.insert("scale".into(), scale.to_string());
    let opts = DatasetOptions { target_shard_bytes: (4 * (3 * h * h + 3 * hh * hh * 7)) as u64 };
    let (mut w, _) = DatasetWriter::create_or_resume(dir, schema, opts).expect("writer");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for i in 0..n {
        // Smooth-ish content: a random gradient plus noise, so the fusion task is learnable.
        let (gx, gy, base): (f32, f32, f32) = (rng.gen_range(-4.0..4.0), rng.gen_range(-4.0..4.0), rng.gen_range(60.0..190.0));
        let mut lr = vec![0u8; 3 * h * h];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..h {
                    let v = base + gx * x as f32 + gy * y as f32 + 20.0 * c as f32 + rng.gen_range(-25.0..25.0);
                    lr[(c * h + y) * h + x] = v.clamp(0.0, 255.0) as u8;
                }
            }
        }
        let mut hr = vec![0u8; 3 * hh * hh];
        for c in 0..3 {
            for y in 0..hh {
                for x in 0..hh {
                    hr[(c * hh + y) * hh + x] = lr[(c * h + y / scale) * h + x / scale];
                }
            }
        }
        let mut raws: Vec<Vec<u8>> = vec![lr.clone(), hr.clone()];
        for (k, (_, c)) in EXPERTS.iter().enumerate() {
            let sr: Vec<u8> = hr.iter().flat_map(|&v| f16::from_f32(v as f32 / 255.0 * sr_gain(k)).to_le_bytes()).collect();
            raws.push(sr);
            if *c > 0 {
                let mut f = Vec::with_capacity(c * h * h * 2);
                for ch in 0..*c {
                    for p in 0..h * h {
                        let v = lr[(ch % 3) * h * h + p] as f32 / 255.0 * feat_gain(ch);
                        f.extend_from_slice(&f16::from_f32(v).to_le_bytes());
                    }
                }
                raws.push(f);
            }
        }
        let meta = SampleMeta {
            id: format!("s{i:04}"),
            source: format!("img{:03}.png", i / 4),
            patch: PatchBox { x: 0, y: 0, w: h as u32, h: h as u32 },
            variant: "clean".into(),
            psnr: Default::default(),
        };
        let refs: Vec<&[u8]> = raws.iter().map(|r| r.as_slice()).collect();
        w.write(&meta, &refs).expect("write sample");
    }
    w.finish().expect("finish");
}
