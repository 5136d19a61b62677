//! Every codec x dtype round-trips; zero-copy views point into the map; datasets resume and the manifest
//! is rebuilt identically; corrupt bytes give errors naming the shard, sample and fault.

#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::path::Path;

use srcache_formats::*;

fn values(dtype: DType, n: usize, seed: u32) -> Vec<u8> {
    // Smooth-ish deterministic content so zstd has something to find, plus a little noise.
    let mut out = Vec::with_capacity(n * dtype.size_of());
    for i in 0..n {
        let v = ((i as f32 * 0.01 + seed as f32).sin() * 0.5 + 0.5) * 0.9 + ((i * 7919) % 13) as f32 * 0.001;
        match dtype {
            DType::U8 => out.push((v * 255.0) as u8),
            DType::U16 => out.extend_from_slice(&((v * 65535.0) as u16).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

fn meta(i: usize) -> SampleMeta {
    let mut psnr = BTreeMap::new();
    psnr.insert("bicubic".to_string(), 25.0 + i as f32 * 0.5);
    SampleMeta {
        id: format!("s{i}"),
        source: "astronaut.png".into(),
        patch: PatchBox { x: i as u32, y: 2, w: 16, h: 16 },
        variant: "clean".into(),
        psnr,
    }
}

fn all_specs() -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    for d in DType::ALL {
        for (cn, c) in [("raw", Codec::Raw), ("zstd", Codec::ZSTD), ("shz", Codec::SHUFFLE_ZSTD), ("aff", Codec::AffineU8)] {
            if c == Codec::AffineU8 && !d.is_float() {
                continue;
            }
            specs.push(TensorSpec::new(format!("{d}/{cn}"), d, &[3, 17, 19], c));
        }
    }
    specs
}

#[test]
fn every_codec_and_dtype_roundtrips_through_a_shard_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.srs");
    let schema = Schema::new(all_specs());
    let mut w = ShardWriter::try_new(&path, schema.clone()).unwrap();
    let mut expect = Vec::new();
    for i in 0..3 {
        let raws: Vec<Vec<u8>> = schema.tensors.iter().map(|s| values(s.dtype, s.numel(), i as u32)).collect();
        let refs: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
        w.write(&meta(i), &refs).unwrap();
        expect.push(raws);
    }
    assert!(!dir.path().join("a.srs").exists(), "final name must not exist before finish");
    let sum = w.finish().unwrap();
    assert_eq!(sum.samples, 3);
    assert!(!dir.path().join("a.srs.srcache-tmp").exists());
    let shard = Shard::open(&path).unwrap();
    assert_eq!(shard.schema(), &schema);
    assert!(shard.verify().is_empty());
    // The file's bytes: every raw tensor must be stored verbatim at a 64-byte aligned offset of the file.
    let file = std::fs::read(&path).unwrap();
    for (i, want_sample) in expect.iter().enumerate() {
        assert_eq!(shard.meta(i).unwrap(), &meta(i));
        for (t, spec) in schema.tensors.iter().enumerate() {
            let v = shard.tensor(i, &spec.name).unwrap();
            let got = v.decode().unwrap();
            let want = &want_sample[t];
            if spec.codec.is_lossy() {
                let a = v.to_f32().unwrap();
                let mut b = Vec::new();
                for c in want.chunks_exact(spec.dtype.size_of()) {
                    b.push(match spec.dtype {
                        DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                        DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                        _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    });
                }
                let bound = v.affine_error_bound().unwrap();
                let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                // quantisation (scale/2) plus the dtype's own rounding of the decoded value (bf16: 2^-8 rel).
                assert!(err <= bound + 0.004, "{}: err {err} > bound {bound}", spec.name);
                assert!(bound > 0.0 && bound < 0.01, "{}: bound {bound}", spec.name);
            } else {
                assert_eq!(&got, want, "{} sample {i}", spec.name);
            }
            if spec.codec == Codec::Raw {
                let r = v.raw().unwrap().unwrap();
                assert_eq!(r, want.as_slice());
                assert_eq!(r.as_ptr() as usize % 64, 0, "zero-copy view must be 64-byte aligned");
                let off = file.windows(r.len()).position(|w| w == r).expect("raw payload stored verbatim in the file");
                assert_eq!(off % 64, 0, "raw payload at file offset {off}, not 64-byte aligned");
            } else {
                assert!(v.raw().unwrap().is_none());
            }
        }
    }
}

#[test]
fn raw_view_points_inside_the_mmap_not_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.srs");
    let spec = TensorSpec::new("hr", DType::U8, &[3, 32, 32], Codec::Raw);
    let mut w = ShardWriter::try_new(&path, Schema::new(vec![spec.clone()])).unwrap();
    let data = values(DType::U8, spec.numel(), 1);
    w.write(&meta(0), &[&data]).unwrap();
    w.finish().unwrap();
    let shard = Shard::open(&path).unwrap();
    let v = shard.tensor(0, "hr").unwrap();
    let a = v.raw().unwrap().unwrap().as_ptr();
    let b = shard.tensor(0, "hr").unwrap().raw().unwrap().unwrap().as_ptr();
    assert_eq!(a, b, "two views of the same tensor must share the mapped bytes");
    // The slice lies within the mapped file: its offset equals the stored payload offset.
    let file = std::fs::read(&path).unwrap();
    let off = file.windows(data.len()).position(|w| w == data.as_slice()).unwrap();
    assert_eq!(off % 64, 0);
    assert_eq!(shard.tensor(0, "hr").unwrap().stored().as_ptr(), a);
}

fn small_schema() -> Schema {
    Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, 8, 8], Codec::Raw),
        TensorSpec::new("sr/bicubic", DType::F16, &[3, 16, 16], Codec::SHUFFLE_ZSTD),
    ])
}

fn write_dataset(dir: &Path, range: std::ops::Range<usize>, stop_after: Option<usize>) -> Resume {
    let opts = DatasetOptions { target_shard_bytes: 3000 };
    let (mut w, resume) = DatasetWriter::create_or_resume(dir, small_schema(), opts).unwrap();
    for i in range.start + resume.samples as usize..range.end {
        let lr = values(DType::U8, 192, i as u32);
        let sr = values(DType::F16, 768, i as u32);
        w.write(&meta(i), &[&lr, &sr]).unwrap();
        if stop_after == Some(i) {
            // Simulate a crash: drop without finish leaves a .tmp (or nothing) behind.
            std::mem::forget(w);
            return resume;
        }
    }
    w.finish().unwrap();
    resume
}

#[test]
fn resumed_dataset_equals_uninterrupted_one() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_dataset(a.path(), 0..20, None);
    write_dataset(b.path(), 0..20, Some(10));
    let r = write_dataset(b.path(), 0..20, None);
    assert!(r.shards > 0 && r.samples > 0 && r.samples <= 11, "{r:?}");
    let ma = Manifest::read(&a.path().join(MANIFEST_FILE)).unwrap();
    let mb = Manifest::read(&b.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(ma.len(), 20);
    assert_eq!(ma, mb);
    for name in std::fs::read_dir(a.path()).unwrap().map(|e| e.unwrap().file_name()) {
        if name.to_string_lossy().ends_with(".srs") {
            assert_eq!(std::fs::read(a.path().join(&name)).unwrap(), std::fs::read(b.path().join(&name)).unwrap());
        }
    }
    let ds = Dataset::open(b.path()).unwrap();
    assert_eq!(ds.len(), 20);
    assert!(ds.shards().len() > 2);
    for g in 0..20 {
        let (s, i) = ds.sample(g).unwrap();
        assert_eq!(s.meta(i).unwrap().id, format!("s{g}"));
        assert_eq!(ds.manifest()[g].sample_id, format!("s{g}"));
    }
    assert!(ds.sample(20).is_err());
    assert_eq!(ma[3].psnr["bicubic"], 26.5);
}

#[test]
fn resume_rejects_a_different_schema() {
    let d = tempfile::tempdir().unwrap();
    write_dataset(d.path(), 0..4, None);
    let mut other = small_schema();
    other.tensors[1].codec = Codec::AffineU8;
    let e = DatasetWriter::create_or_resume(d.path(), other, DatasetOptions::default()).err().unwrap();
    assert!(matches!(e, FormatError::SchemaMismatch { .. }), "{e}");
}
