//! `srcache export`: get cached tensors out to tools that do not read shards (numpy, safetensors users,
//! spreadsheets). Values are exported exactly as the shard decodes them; nothing is renormalised.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use srcache_formats::{DType, Manifest, Shard, TensorSpec, MANIFEST_FILE};

use crate::cmd_inspect::{find_sample, shard_paths};

/// Export one sample or a whole shard to .npz / .safetensors, or the manifest to CSV.
///
/// Examples:
///   srcache export cache/ --sample 0001_x2_000017 --format npz --out s.npz
///   srcache export cache/ --shard 3 --format safetensors --out shard3.safetensors
///   srcache export cache/ --manifest-csv manifest.csv
///
/// In .npz each tensor is one array named like the tensor (`lr`, `hr`, `sr/<expert>`, `feat/<expert>`).
/// numpy has no bfloat16, so bf16 tensors are widened to float32 in .npz (exactly; safetensors keeps bf16).
/// A whole-shard export stacks samples along a new first axis and adds `sample_id` (an array of strings in
/// .npz, a JSON list in the safetensors metadata).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset directory (holding shard-*.srs and manifest.parquet).
    pub dir: PathBuf,
    /// Export the sample with this id (see `srcache export DIR --manifest-csv` for the ids).
    #[arg(long, conflicts_with = "shard")]
    pub sample: Option<String>,
    /// Export every sample of shard number N (the file shard-0000N.srs), stacked along a new first axis.
    #[arg(long)]
    pub shard: Option<u32>,
    /// File format for --sample / --shard.
    #[arg(long, value_enum, default_value_t = Format::Npz)]
    pub format: Format,
    /// Output file for --sample / --shard.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the manifest (one row per sample: id, shard, index, source, patch box, per-expert PSNR,
    /// stored and raw bytes) to this CSV file.
    #[arg(long)]
    pub manifest_csv: Option<PathBuf>,
    /// Deflate-compress the .npz members (smaller, slower; numpy reads both).
    #[arg(long)]
    pub compress: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// numpy's zip of .npy arrays (`numpy.load(path)`).
    Npz,
    /// Hugging Face safetensors (`safetensors.numpy.load_file(path)` / `safetensors.torch.load_file`).
    Safetensors,
}

pub fn run(args: Args) -> Result<()> {
    let mut did = false;
    if let Some(csv) = &args.manifest_csv {
        let n = export_manifest_csv(&args.dir, csv)?;
        println!("wrote {} ({n} rows)", csv.display());
        did = true;
    }
    if args.sample.is_some() || args.shard.is_some() {
        let Some(out) = &args.out else { bail!("--out FILE is required with --sample / --shard") };
        let (shard, indices) = if let Some(id) = &args.sample {
            let (shard, i) = find_sample(&args.dir, id)?;
            (shard, vec![i])
        } else {
            let n = args.shard.unwrap_or_default();
            let path = shard_file(&args.dir, n)?;
            let shard = Shard::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let all = (0..shard.len()).collect();
            (shard, all)
        };
        let stacked = args.shard.is_some();
        match args.format {
            Format::Npz => write_npz(&shard, &indices, stacked, out, args.compress)?,
            Format::Safetensors => write_safetensors(&shard, &indices, stacked, out)?,
        }
        println!("wrote {} ({} sample(s), {} tensors each)", out.display(), indices.len(), shard.schema().tensors.len());
        did = true;
    }
    if !did {
        bail!("nothing to export: give --sample ID, --shard N, or --manifest-csv FILE (see --help)");
    }
    Ok(())
}

/// The shard file numbered `n` in `dir`: `shard-{n:05}.srs`, else the n-th shard in sorted order.
fn shard_file(dir: &Path, n: u32) -> Result<PathBuf> {
    let named = dir.join(format!("shard-{n:05}.srs"));
    if named.is_file() {
        return Ok(named);
    }
    let all = shard_paths(dir)?;
    all.get(n as usize)
        .cloned()
        .with_context(|| format!("{}: no shard number {n} (found {} shards)", dir.display(), all.len()))
}

/// Decoded little-endian bytes of `name` for each sample in `indices`, concatenated.
fn gather(shard: &Shard, indices: &[usize], spec: &TensorSpec) -> Result<Vec<u8>> {
    let per = spec.raw_len().context("tensor size overflows")?;
    let mut out = vec![0u8; per * indices.len()];
    for (k, &i) in indices.iter().enumerate() {
        let view = shard.tensor(i, &spec.name)?;
        view.decode_into(&mut out[k * per..(k + 1) * per])?;
    }
    Ok(out)
}

fn out_shape(spec: &TensorSpec, n: usize, stacked: bool) -> Vec<usize> {
    let mut shape = spec.shape.clone();
    if stacked {
        shape.insert(0, n);
    }
    shape
}

// ---------------------------------------------------------------------------------------------------- npz

/// numpy dtype string and the bytes to store (bf16 widened to f32, exactly).
fn npy_payload(dtype: DType, raw: Vec<u8>) -> (&'static str, Vec<u8>) {
    match dtype {
        DType::U8 => ("|u1", raw),
        DType::U16 => ("<u2", raw),
        DType::F16 => ("<f2", raw),
        DType::F32 => ("<f4", raw),
        DType::BF16 => {
            let wide = raw
                .chunks_exact(2)
                .flat_map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16).to_le_bytes())
                .collect();
            ("<f4", wide)
        }
    }
}

/// A .npy v1.0 header (magic, version, length, dict padded so the data starts 64-byte aligned).
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Fixed-width unicode (`<U{n}`) array of strings: numpy stores each as n UCS-4 code points, zero padded.
fn npy_strings(items: &[String]) -> (String, Vec<u8>) {
    let n = items.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(1);
    let mut out = Vec::with_capacity(items.len() * n * 4);
    for s in items {
        let mut k = 0;
        for ch in s.chars() {
            out.extend_from_slice(&(ch as u32).to_le_bytes());
            k += 1;
        }
        out.resize(out.len() + (n - k) * 4, 0);
    }
    (format!("<U{n}"), out)
}

fn write_npz(shard: &Shard, indices: &[usize], stacked: bool, out: &Path, compress: bool) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(file));
    let method = if compress { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let member = |zip: &mut zip::ZipWriter<BufWriter<File>>, name: &str, descr: &str, shape: &[usize], data: &[u8]| {
        let opts = zip::write::FileOptions::default()
            .compression_method(method)
            .large_file(data.len() as u64 >= u32::MAX as u64 / 2);
        zip.start_file(format!("{name}.npy"), opts).with_context(|| format!("zip member {name}"))?;
        zip.write_all(&npy_header(descr, shape))?;
        zip.write_all(data)?;
        anyhow::Ok(())
    };
    for spec in &shard.schema().tensors {
        let raw = gather(shard, indices, spec)?;
        let (descr, data) = npy_payload(spec.dtype, raw);
        member(&mut zip, &spec.name, descr, &out_shape(spec, indices.len(), stacked), &data)?;
    }
    if stacked {
        let ids = sample_ids(shard, indices)?;
        let (descr, data) = npy_strings(&ids);
        member(&mut zip, "sample_id", &descr, &[ids.len()], &data)?;
    }
    let mut w = zip.finish().context("finishing zip")?;
    w.flush()?;
    Ok(())
}

fn sample_ids(shard: &Shard, indices: &[usize]) -> Result<Vec<String>> {
    indices.iter().map(|&i| Ok(shard.meta(i)?.id.clone())).collect()
}

// ---------------------------------------------------------------------------------------------- safetensors

/// A tensor decoded only when the serializer asks for its bytes, so a whole-shard export holds one stacked
/// tensor in memory at a time.
struct LazyTensor<'a> {
    shard: &'a Shard,
    indices: &'a [usize],
    spec: &'a TensorSpec,
    shape: Vec<usize>,
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.spec.dtype {
            DType::U8 => safetensors::Dtype::U8,
            DType::U16 => safetensors::Dtype::U16,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F32 => safetensors::Dtype::F32,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // The trait cannot fail; shards were verified-on-read already by `gather`'s checksum, so a failure
        // here is reported as zeros and caught by the pre-pass in `write_safetensors`.
        Cow::Owned(gather(self.shard, self.indices, self.spec).unwrap_or_else(|_| vec![0; self.data_len()]))
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.spec.dtype.size_of()
    }
}

fn write_safetensors(shard: &Shard, indices: &[usize], stacked: bool, out: &Path) -> Result<()> {
    // Decode failures cannot propagate out of `View::data`, so check every payload first (cheap relative
    // to writing) and fail loudly instead of exporting zeros.
    for spec in &shard.schema().tensors {
        for &i in indices {
            shard.tensor(i, &spec.name)?.decode()?;
        }
    }
    let tensors: Vec<(String, LazyTensor<'_>)> = shard
        .schema()
        .tensors
        .iter()
        .map(|spec| {
            let t = LazyTensor { shard, indices, spec, shape: out_shape(spec, indices.len(), stacked) };
            (spec.name.clone(), t)
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("schema".to_string(), serde_json::to_string(shard.schema())?);
    if stacked {
        meta.insert("sample_id".to_string(), serde_json::to_string(&sample_ids(shard, indices)?)?);
    } else if let Some(&i) = indices.first() {
        meta.insert("sample".to_string(), serde_json::to_string(shard.meta(i)?)?);
    }
    safetensors::serialize_to_file(tensors, &Some(meta), out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------- csv

fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

fn export_manifest_csv(dir: &Path, out: &Path) -> Result<usize> {
    let path = dir.join(MANIFEST_FILE);
    let rows = Manifest::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let experts: BTreeSet<&String> = rows.iter().flat_map(|r| r.psnr.keys()).collect();
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::new(file);
    let mut header = vec!["sample_id", "shard", "index", "source", "variant", "x", "y", "w", "h"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    header.extend(experts.iter().map(|e| format!("psnr_{e}")));
    header.extend(["bytes".to_string(), "raw_bytes".to_string()]);
    writeln!(w, "{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
    for r in &rows {
        let mut f: Vec<String> = vec![
            csv_field(&r.sample_id).into_owned(),
            r.shard.to_string(),
            r.index.to_string(),
            csv_field(&r.source).into_owned(),
            csv_field(&r.variant).into_owned(),
            r.x.to_string(),
            r.y.to_string(),
            r.w.to_string(),
            r.h.to_string(),
        ];
        // Empty cell where an expert has no PSNR for this row (e.g. a dataset cached in two runs).
        f.extend(experts.iter().map(|e| r.psnr.get(*e).map(|p| p.to_string()).unwrap_or_default()));
        f.push(r.bytes.to_string());
        f.push(r.raw_bytes.to_string());
        writeln!(w, "{}", f.join(","))?;
    }
    w.flush()?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_well_formed() {
        let h = npy_header("<f2", &[3, 4, 5]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([h[8], h[9]]) as usize;
        assert_eq!(len + 10, h.len());
        let dict = std::str::from_utf8(&h[10..]).expect("ascii");
        assert!(dict.starts_with("{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4, 5), }"));
        assert!(dict.ends_with('\n'));
        assert!(String::from_utf8_lossy(&npy_header("|u1", &[7])).contains("(7,)"));
    }

    #[test]
    fn strings_are_ucs4_padded() {
        let (d, b) = npy_strings(&["ab".into(), "c".into()]);
        assert_eq!(d, "<U2");
        assert_eq!(b.len(), 16);
        assert_eq!(&b[8..12], &(b'c' as u32).to_le_bytes());
        assert_eq!(&b[12..16], &[0, 0, 0, 0]);
    }

    #[test]
    fn bf16_widens_exactly() {
        let one_bf16 = 0x3F80u16.to_le_bytes().to_vec();
        let (d, b) = npy_payload(DType::BF16, one_bf16);
        assert_eq!(d, "<f4");
        assert_eq!(f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 1.0);
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
