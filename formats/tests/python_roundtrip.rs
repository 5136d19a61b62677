//! Rust writes a dataset with every codec; the pure-Python reader must reproduce every tensor exactly
//! (for the lossy codecs: exactly what the Rust decoder produces; for residual_u8: the lossless original).
//! Also: numpy's `bicubic_u8` (the residual base B) equals Rust's byte for byte on a real photo crop, and the
//! PCA basis in the schema attrs reads back exactly and reconstructs like Rust.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use srcache_formats::*;

const LR: usize = 12;
const S: usize = 4;
const PCA_C: usize = 16;
const PCA_K: usize = 5;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An orthonormal k x C basis (rows of a Householder reflection).
fn basis() -> PcaBasis {
    let v: Vec<f64> = (0..PCA_C).map(|i| ((i * 3 + 2) as f64).cos()).collect();
    let n2: f64 = v.iter().map(|x| x * x).sum();
    let v = &v;
    let comps =
        (0..PCA_K).flat_map(|i| (0..PCA_C).map(move |j| (if i == j { 1.0 } else { 0.0 }) - 2.0 * v[i] * v[j] / n2)).map(|x| x as f32).collect();
    let mean = (0..PCA_C).map(|i| (i as f32 * 0.7).sin() * 0.3).collect();
    let evr = vec![0.4, 0.25, 0.15, 0.1, 0.05];
    PcaBasis::new(mean, comps, evr, BTreeMap::from([("samples".into(), "7".into()), ("method".into(), "test".into())])).unwrap()
}

#[test]
fn python_reader_reads_rust_shards_exactly() {
    let ws = common::workspace();
    let python = ws.join(".venv/bin/python");
    assert!(python.exists(), "{} missing: run scripts/setup.sh", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    let exp = tmp.path().join("expected");
    std::fs::create_dir_all(&exp).unwrap();
    let mut specs = Vec::new();
    for d in DType::ALL {
        for c in [Codec::Raw, Codec::ZSTD, Codec::SHUFFLE_ZSTD, Codec::AffineU8, Codec::AFFINE_U8_ZSTD] {
            if c.is_lossy() && !d.is_float() {
                continue;
            }
            specs.push(TensorSpec::new(format!("{d}/{}", c.name()), d, &[3, 9, 11], c));
        }
    }
    // A residual SR tensor before its base in schema order, its base, a raw-lr-free second one, PCA features.
    specs.push(TensorSpec::new("sr/res", DType::U8, &[3, S * LR, S * LR], Codec::RESIDUAL_U8));
    specs.push(TensorSpec::new("lr", DType::U8, &[3, LR, LR], Codec::ZSTD));
    specs.push(TensorSpec::new("sr/res9", DType::U8, &[3, S * LR, S * LR], Codec::ResidualU8 { level: 9 }));
    specs.push(TensorSpec::new("feat/p", DType::F16, &[PCA_K, LR, LR], Codec::AFFINE_U8_ZSTD));
    let mut schema = Schema::new(specs);
    let basis = basis();
    schema.set_pca("p", &basis).unwrap();
    let (img, ih, iw) = common::photo("coffee.png");
    let (mut w, _) = DatasetWriter::create_or_resume(&ds, schema.clone(), DatasetOptions { target_shard_bytes: 20_000 }).unwrap();
    let n = 7;
    for i in 0..n {
        let hr = common::crop(&img, ih, iw, 30 + 40 * i, 50 + 60 * i, S * LR, S * LR);
        let lr = common::downscale(&hr, S * LR, S * LR, S);
        let feats: Vec<f32> = (0..PCA_C * LR * LR).map(|k| ((k * 13 + i * 5) % 41) as f32 / 41.0 + lr[k % lr.len()] as f32 / 255.0).collect();
        let raws: Vec<Vec<u8>> = schema
            .tensors
            .iter()
            .map(|s| match s.name.as_str() {
                "lr" => lr.clone(),
                "sr/res" => common::float_bicubic(&lr, LR, LR, S, -0.75),
                "sr/res9" => common::blend(&hr, &common::float_bicubic(&lr, LR, LR, S, -0.5)),
                "feat/p" => basis.project(&feats, LR, LR).unwrap().iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                _ => {
                    let vals: Vec<f32> = (0..s.numel()).map(|k| ((k * 31 + i * 7) % 97) as f32 / 97.0).collect();
                    vals.iter()
                        .flat_map(|&v| match s.dtype {
                            DType::U8 => vec![(v * 255.0) as u8],
                            DType::U16 => ((v * 60000.0) as u16).to_le_bytes().to_vec(),
                            DType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                            DType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                            DType::F32 => v.to_le_bytes().to_vec(),
                        })
                        .collect()
                }
            })
            .collect();
        let refs: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
        let mut meta = SampleMeta { id: format!("s{i}"), source: "coffee.png".into(), ..Default::default() };
        meta.psnr.insert("bicubic".into(), 30.0 + i as f32);
        w.write(&meta, &refs).unwrap();
        // Residual tensors are lossless: what was written is what must come back.
        for name in ["sr/res", "sr/res9"] {
            let k = schema.index_of(name).unwrap();
            std::fs::write(exp.join(format!("s{i}__{}.orig", name.replace('/', "_"))), &raws[k]).unwrap();
        }
    }
    let sum = w.finish().unwrap();
    assert!(sum.shards > 1);
    let dataset = Dataset::open(&ds).unwrap();
    let stored_basis = dataset.schema().unwrap().pca("p").unwrap().unwrap();
    for g in 0..n {
        let (s, i) = dataset.sample(g).unwrap();
        for t in &schema.tensors {
            let bytes = s.tensor(i, &t.name).unwrap().decode().unwrap();
            let stem = format!("s{g}__{}", t.name.replace('/', "_"));
            if t.codec.needs_base() {
                assert_eq!(bytes, std::fs::read(exp.join(format!("{stem}.orig"))).unwrap(), "{stem}: residual_u8 is lossless");
            }
            std::fs::write(exp.join(format!("{stem}.bin")), bytes).unwrap();
        }
        let coeffs = s.tensor(i, "feat/p").unwrap().to_f32().unwrap();
        std::fs::write(exp.join(format!("s{g}__feat_p.recon")), f32_bytes(&stored_basis.reconstruct(&coeffs, LR, LR).unwrap())).unwrap();
    }
    std::fs::write(exp.join("count.txt"), n.to_string()).unwrap();
    std::fs::write(exp.join("pca.json"), basis.to_json()).unwrap();
    std::fs::write(exp.join("pca_components.bin"), f32_bytes(&basis.components)).unwrap();
    std::fs::write(exp.join("pca_mean.bin"), f32_bytes(&basis.mean)).unwrap();
    // B on a real photo crop (non-square, odd sizes), for scales 1..=5, against numpy.
    let (bh, bw) = (61, 83);
    let (img, ih, iw) = common::photo("chelsea.png");
    let crop = common::crop(&img, ih, iw, 101, 177, bh, bw);
    let bdir = exp.join("bicubic");
    std::fs::create_dir_all(&bdir).unwrap();
    std::fs::write(bdir.join(format!("crop_{bh}x{bw}.bin")), &crop).unwrap();
    for s in 1..=5 {
        std::fs::write(bdir.join(format!("b_s{s}.bin")), residual::bicubic_u8(&crop, bh, bw, s)).unwrap();
    }
    let out = Command::new(&python).arg(ws.join("python/tests/check_roundtrip.py")).arg(tmp.path()).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed:\n{so}\n{}", String::from_utf8_lossy(&out.stderr));
    print!("{so}");
    assert!(so.contains(&format!("ok {} tensors, {n} manifest rows", n * schema.tensors.len())), "{so}");
    assert!(so.contains("ok bicubic_u8 equals Rust on chelsea.png 61x83 for s = 1..5"), "{so}");
    assert!(so.contains(&format!("ok pca basis feat/p k={PCA_K} C={PCA_C} exact, reconstruct matches Rust on {n} samples")), "{so}");
}
