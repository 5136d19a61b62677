//! Cached tensors out to tools that do not read shards: numpy (`.npz`), safetensors, and the manifest as CSV.
//! Values are exported exactly as the shard decodes them; nothing is renormalised. Every file is written
//! atomically ([`crate::AtomicFile`]).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use crate::atomic::{sync_dir, tmp_path, AtomicFile};
use crate::{DType, FormatError, ManifestRow, Result, Shard, TensorSpec};

fn export_err(path: &Path, what: impl Into<String>) -> FormatError {
    FormatError::Export { path: path.to_path_buf(), what: what.into() }
}

/// What one exported array holds: a stored tensor as decoded, or (with `reconstruct`) a PCA-compressed feature
/// map rebuilt to its full channels in f32.
struct Item {
    /// The array's spec (for a reconstructed feature: f32, [C, h, w]).
    spec: TensorSpec,
    /// The stored tensor's spec.
    stored: TensorSpec,
    basis: Option<crate::PcaBasis>,
}

/// The arrays to export from `shard`, in schema order.
fn items(shard: &Shard, reconstruct: bool) -> Result<Vec<Item>> {
    let schema = shard.schema();
    schema
        .tensors
        .iter()
        .map(|t| {
            let basis = match (reconstruct, t.name.parse::<crate::TensorName>()) {
                (true, Ok(crate::TensorName::Feat(e))) => schema.pca(&e).transpose()?,
                _ => None,
            };
            let spec = match &basis {
                Some(b) => TensorSpec::new(t.name.clone(), DType::F32, &[b.channels, t.shape[1], t.shape[2]], crate::Codec::Raw),
                None => t.clone(),
            };
            Ok(Item { spec, stored: t.clone(), basis })
        })
        .collect()
}

/// [`gather`] of an [`Item`]: decoded bytes, or the rebuilt full feature map (f32) for a PCA item.
fn gather_item(shard: &Shard, indices: &[usize], item: &Item) -> Result<Vec<u8>> {
    let Some(b) = &item.basis else { return gather(shard, indices, &item.stored) };
    let (h, w) = (item.stored.shape[1], item.stored.shape[2]);
    let mut out = Vec::new();
    for &i in indices {
        let coeffs = shard.tensor(i, &item.stored.name)?.to_f32()?;
        out.extend(b.reconstruct(&coeffs, h, w)?.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(out)
}

/// Decoded little-endian bytes of `name` for each sample in `indices`, concatenated.
fn gather(shard: &Shard, indices: &[usize], spec: &TensorSpec) -> Result<Vec<u8>> {
    let per = spec.raw_len().ok_or_else(|| FormatError::InvalidInput { what: format!("tensor {:?}: size overflows", spec.name) })?;
    let total = per.checked_mul(indices.len()).ok_or_else(|| FormatError::InvalidInput { what: "export size overflows".into() })?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| FormatError::Alloc {
        path: shard.path().to_path_buf(),
        sample: indices.first().copied().unwrap_or(0),
        tensor: spec.name.clone(),
        bytes: total as u64,
    })?;
    out.resize(total, 0);
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
            let wide = raw.chunks_exact(2).flat_map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16).to_le_bytes()).collect();
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

/// Samples `indices` of `shard` as a numpy `.npz`: one array per tensor (stacked along a new first axis when
/// `stacked`, plus a `sample_id` string array); `compress` deflates the members.
/// With `reconstruct`, PCA-compressed features (`feat/<e>` with a basis in the schema) are exported rebuilt to
/// their full channels (f32) instead of as stored coefficients.
pub fn write_npz(shard: &Shard, indices: &[usize], stacked: bool, out: &Path, compress: bool, reconstruct: bool) -> Result<()> {
    let file = AtomicFile::create(out)?;
    let mut zip = zip::ZipWriter::new(file);
    let method = if compress { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let member = |zip: &mut zip::ZipWriter<AtomicFile>, name: &str, descr: &str, shape: &[usize], data: &[u8]| -> Result<()> {
        let opts = zip::write::FileOptions::default().compression_method(method).large_file(data.len() as u64 >= u32::MAX as u64 / 2);
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| export_err(out, format!("zip member {name}: {e}")))?;
        zip.write_all(&npy_header(descr, shape)).map_err(|e| FormatError::io(out, "writing npz", e))?;
        zip.write_all(data).map_err(|e| FormatError::io(out, "writing npz", e))?;
        Ok(())
    };
    for item in items(shard, reconstruct)? {
        let raw = gather_item(shard, indices, &item)?;
        let (descr, data) = npy_payload(item.spec.dtype, raw);
        member(&mut zip, &item.spec.name, descr, &out_shape(&item.spec, indices.len(), stacked), &data)?;
    }
    if stacked {
        let ids = sample_ids(shard, indices)?;
        let (descr, data) = npy_strings(&ids);
        member(&mut zip, "sample_id", &descr, &[ids.len()], &data)?;
    }
    let w = zip.finish().map_err(|e| export_err(out, format!("finishing zip: {e}")))?;
    w.commit()
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
    item: &'a Item,
    shape: Vec<usize>,
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.item.spec.dtype {
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
        Cow::Owned(gather_item(self.shard, self.indices, self.item).unwrap_or_else(|_| vec![0; self.data_len()]))
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.item.spec.dtype.size_of()
    }
}

/// Samples `indices` of `shard` as safetensors (bf16 kept), with the schema and sample ids in the metadata;
/// `reconstruct` as in [`write_npz`].
pub fn write_safetensors(shard: &Shard, indices: &[usize], stacked: bool, out: &Path, reconstruct: bool) -> Result<()> {
    // Decode failures cannot propagate out of `View::data`, so check every payload first (cheap relative
    // to writing) and fail loudly instead of exporting zeros.
    for spec in &shard.schema().tensors {
        for &i in indices {
            shard.tensor(i, &spec.name)?.decode()?;
        }
    }
    let items = items(shard, reconstruct)?;
    let tensors: Vec<(String, LazyTensor<'_>)> = items
        .iter()
        .map(|item| {
            let t = LazyTensor { shard, indices, item, shape: out_shape(&item.spec, indices.len(), stacked) };
            (item.spec.name.clone(), t)
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("schema".to_string(), json(shard.schema(), out)?);
    if stacked {
        meta.insert("sample_id".to_string(), json(&sample_ids(shard, indices)?, out)?);
    } else if let Some(&i) = indices.first() {
        meta.insert("sample".to_string(), json(shard.meta(i)?, out)?);
    }
    // safetensors writes to a path: give it the temporary name, then fsync and rename like AtomicFile does.
    let tmp = tmp_path(out);
    safetensors::serialize_to_file(tensors, &Some(meta), &tmp).map_err(|e| export_err(out, e.to_string()))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| FormatError::io(&tmp, "fsyncing", e))?;
    std::fs::rename(&tmp, out).map_err(|e| FormatError::io(out, "renaming into place", e))?;
    sync_dir(out)
}

fn json<T: serde::Serialize + ?Sized>(v: &T, out: &Path) -> Result<String> {
    serde_json::to_string(v).map_err(|e| export_err(out, format!("metadata: {e}")))
}

// ---------------------------------------------------------------------------------------------------- csv

fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// The manifest rows as CSV: id, shard, index, source, variant, patch box, `psnr_<expert>` per expert
/// (empty where a row has none), stored and raw bytes.
pub fn write_manifest_csv(rows: &[ManifestRow], out: &Path) -> Result<()> {
    let experts: BTreeSet<&String> = rows.iter().flat_map(|r| r.psnr.keys()).collect();
    let mut w = AtomicFile::create(out)?;
    let io = |e| FormatError::io(out, "writing csv", e);
    let mut header = vec!["sample_id", "shard", "index", "source", "variant", "x", "y", "w", "h"].into_iter().map(String::from).collect::<Vec<_>>();
    header.extend(experts.iter().map(|e| format!("psnr_{e}")));
    header.extend(["bytes".to_string(), "raw_bytes".to_string()]);
    writeln!(w, "{}", header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",")).map_err(io)?;
    for r in rows {
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
        writeln!(w, "{}", f.join(",")).map_err(io)?;
    }
    w.commit()
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
