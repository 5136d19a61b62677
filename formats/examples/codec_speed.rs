//! Quick single-core codec speed check on SYNTHETIC smooth f16 images (the full benchmark on real photos
//! and tch feature maps is `srcache bench formats`). Run: cargo run --release -p srcache-formats --example codec_speed
use std::time::Instant;

use srcache_formats::*;

fn main() -> Result<()> {
    let (c, h, w) = (3, 256, 256);
    let mut raw = Vec::with_capacity(c * h * w * 2);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let v = 0.5 + 0.3 * ((x as f32 * 0.03 + ch as f32).sin() * (y as f32 * 0.021).cos()) + ((x * 31 + y * 17) % 7) as f32 * 0.002;
                raw.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
    }
    for codec in [Codec::Raw, Codec::ZSTD, Codec::SHUFFLE_ZSTD, Codec::ShuffleZstd { level: 3 }, Codec::AffineU8] {
        let spec = TensorSpec::new("sr", DType::F16, &[c, h, w], codec);
        let reps = 40;
        let t = Instant::now();
        let mut e = encode(&spec, &raw)?;
        for _ in 1..reps {
            e = encode(&spec, &raw)?;
        }
        let enc = (raw.len() * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        let mut out = vec![0u8; raw.len()];
        let t = Instant::now();
        for _ in 0..reps {
            decode_payload(&spec, &e.bytes, &mut out).map_err(|what| FormatError::InvalidInput { what })?;
        }
        let dec = (raw.len() * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("{:<16} encode {enc:6.2} GB/s  decode {dec:6.2} GB/s  ratio {:5.2}", codec.to_string(), raw.len() as f64 / e.bytes.len() as f64);
    }
    Ok(())
}
