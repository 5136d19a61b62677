//! Rust writes a dataset with every codec; the pure-Python reader must reproduce every tensor exactly
//! (for the lossy codec: exactly what the Rust decoder produces).

use std::path::Path;
use std::process::Command;

use srcache_formats::*;

#[test]
fn python_reader_reads_rust_shards_exactly() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = ws.join(".venv/bin/python");
    assert!(python.exists(), "{} missing: run scripts/setup.sh", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    let exp = tmp.path().join("expected");
    std::fs::create_dir_all(&exp).unwrap();
    let mut specs = Vec::new();
    for d in DType::ALL {
        for c in [Codec::Raw, Codec::ZSTD, Codec::SHUFFLE_ZSTD, Codec::AffineU8] {
            if c == Codec::AffineU8 && !d.is_float() {
                continue;
            }
            specs.push(TensorSpec::new(format!("{d}/{}", c.name()), d, &[3, 9, 11], c));
        }
    }
    let schema = Schema::new(specs);
    let (mut w, _) = DatasetWriter::create_or_resume(&ds, schema.clone(), DatasetOptions { target_shard_bytes: 20_000 }).unwrap();
    let n = 7;
    for i in 0..n {
        let raws: Vec<Vec<u8>> = schema
            .tensors
            .iter()
            .map(|s| {
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
            })
            .collect();
        let refs: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
        let mut meta = SampleMeta { id: format!("s{i}"), source: "coffee.png".into(), ..Default::default() };
        meta.psnr.insert("bicubic".into(), 30.0 + i as f32);
        w.write(&meta, &refs).unwrap();
    }
    let sum = w.finish().unwrap();
    assert!(sum.shards > 1);
    let dataset = Dataset::open(&ds).unwrap();
    for g in 0..n {
        let (s, i) = dataset.sample(g).unwrap();
        for t in &schema.tensors {
            let bytes = s.tensor(i, &t.name).unwrap().decode().unwrap();
            std::fs::write(exp.join(format!("s{g}__{}.bin", t.name.replace('/', "_"))), bytes).unwrap();
        }
    }
    std::fs::write(exp.join("count.txt"), n.to_string()).unwrap();
    let out = Command::new(&python).arg(ws.join("python/tests/check_roundtrip.py")).arg(tmp.path()).output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python failed:\n{so}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(so.contains(&format!("ok {} tensors, {n} manifest rows", n * schema.tensors.len())), "{so}");
}
