//! The dataset manifest: one Parquet row per sample, for pandas/pyarrow/duckdb users and for quick
//! selection without opening shards. It is derived data: `from_shards` rebuilds it from the shards' own
//! metadata, which is what `DatasetWriter::finish` does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::atomic::AtomicFile;
use crate::files::MANIFEST_FILE;
use crate::{FormatError, Result, Shard};

/// Parquet key-value metadata: xxh3-64 (hex) of the rows' canonical JSON. Parquet pages of plain-encoded
/// numbers have no checksum a reader verifies by default, so a flipped bit there would be silent.
const ROWS_CHECKSUM_KEY: &str = "srcache.rows_xxh3";
const VERSION_KEY: &str = "srcache.manifest_version";
const PSNR_PREFIX: &str = "psnr/";
/// Parquet key-value metadata: JSON list of `{path, reason}` for input files the producer skipped (unreadable,
/// too small, unpaired…), so a dataset says what it is missing, not only the log of the run that made it.
pub const SKIPPED_KEY: &str = "srcache.skipped";
/// Parquet key-value metadata of a merged root's manifest: JSON list of its part directories, relative to the
/// root (`["parts/0-of-3", ...]`); its rows' `shard` column then holds paths relative to the root.
pub const PARTS_KEY: &str = "srcache.parts";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ManifestRow {
    pub sample_id: String,
    /// Shard file name within the dataset directory, e.g. `shard-00000.srs`.
    pub shard: String,
    /// Sample index within the shard.
    pub index: u64,
    pub source: String,
    pub variant: String,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    /// One `psnr/<expert>` column per expert; an expert missing from a row is null there.
    pub psnr: BTreeMap<String, f32>,
    /// Stored (compressed) payload bytes of the sample.
    pub bytes: u64,
    /// Logical (decoded) bytes of the sample.
    pub raw_bytes: u64,
}

pub struct Manifest;

fn rows_checksum(rows: &[ManifestRow]) -> Result<u64> {
    let json = serde_json::to_vec(rows).map_err(|e| FormatError::InvalidInput { what: format!("manifest rows: {e}") })?;
    Ok(xxh3_64(&json))
}

impl ManifestRow {
    /// The row that describes sample `i` of `shard` (file name `name`): what the manifest must say of it.
    pub fn from_shard(shard: &Shard, i: usize, name: &str) -> Result<ManifestRow> {
        let m = shard.meta(i)?;
        let (bytes, raw_bytes) = shard.sample_bytes(i)?;
        Ok(ManifestRow {
            sample_id: m.id.clone(),
            shard: name.to_string(),
            index: i as u64,
            source: m.source.clone(),
            variant: m.variant.clone(),
            x: m.patch.x,
            y: m.patch.y,
            w: m.patch.w,
            h: m.patch.h,
            psnr: m.psnr.clone(),
            bytes,
            raw_bytes,
        })
    }
}

impl Manifest {
    /// Rows for every sample of every `shard-*.srs` in `dir`, in shard then index order.
    pub fn from_shards(dir: &Path) -> Result<Vec<ManifestRow>> {
        let mut rows = Vec::new();
        for path in crate::files::list_shards(dir)? {
            let shard = Shard::open(&path)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for i in 0..shard.metas().len() {
                rows.push(ManifestRow::from_shard(&shard, i, &name)?);
            }
        }
        Ok(rows)
    }

    /// Writes `rows` to `path` atomically (temp file, fsync, rename, fsync dir).
    pub fn write(path: &Path, rows: &[ManifestRow]) -> Result<()> {
        Self::write_with_metadata(path, rows, &BTreeMap::new())
    }

    /// [`Manifest::write`] plus extra Parquet key-value metadata (e.g. [`SKIPPED_KEY`]); `srcache.` keys that
    /// the manifest itself owns (version, checksum) cannot be overridden.
    pub fn write_with_metadata(path: &Path, rows: &[ManifestRow], extra: &BTreeMap<String, String>) -> Result<()> {
        let merr = |what: String| FormatError::Manifest { path: path.to_path_buf(), what };
        let experts: BTreeSet<&str> = rows.iter().flat_map(|r| r.psnr.keys().map(String::as_str)).collect();
        let mut fields = vec![
            Field::new("sample_id", DataType::Utf8, false),
            Field::new("shard", DataType::Utf8, false),
            Field::new("index", DataType::UInt64, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("variant", DataType::Utf8, false),
            Field::new("x", DataType::UInt32, false),
            Field::new("y", DataType::UInt32, false),
            Field::new("w", DataType::UInt32, false),
            Field::new("h", DataType::UInt32, false),
        ];
        for e in &experts {
            fields.push(Field::new(format!("{PSNR_PREFIX}{e}"), DataType::Float32, true));
        }
        fields.push(Field::new("bytes", DataType::UInt64, false));
        fields.push(Field::new("raw_bytes", DataType::UInt64, false));
        let strs = |f: fn(&ManifestRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
        let u32s = |f: fn(&ManifestRow) -> u32| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(rows.iter().map(f))) };
        let mut cols: Vec<ArrayRef> = vec![
            strs(|r| &r.sample_id),
            strs(|r| &r.shard),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.index))),
            strs(|r| &r.source),
            strs(|r| &r.variant),
            u32s(|r| r.x),
            u32s(|r| r.y),
            u32s(|r| r.w),
            u32s(|r| r.h),
        ];
        for e in &experts {
            cols.push(Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.psnr.get(*e).copied()))));
        }
        cols.push(Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.bytes))));
        cols.push(Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.raw_bytes))));
        let schema = Arc::new(ArrowSchema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| merr(format!("building columns: {e}")))?;
        let mut kv = vec![
            KeyValue::new(VERSION_KEY.to_string(), "1".to_string()),
            KeyValue::new(ROWS_CHECKSUM_KEY.to_string(), format!("{:016x}", rows_checksum(rows)?)),
        ];
        kv.extend(extra.iter().filter(|(k, _)| *k != VERSION_KEY && *k != ROWS_CHECKSUM_KEY).map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        let kv = kv.into_iter().map(|e| (e.key, e.value.unwrap_or_default())).collect();
        write_parquet(path, &batch, &kv)
    }

    /// Reads a manifest back, verifying its row checksum.
    pub fn read(path: &Path) -> Result<Vec<ManifestRow>> {
        // parquet 57 panics (unwrap in its thrift footer decoder) on some corrupt footers; our contract is
        // an error naming the file, never a panic.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::read_inner(path))).unwrap_or_else(|_| {
            Err(FormatError::Manifest { path: path.to_path_buf(), what: "corrupt Parquet footer (parquet reader panicked)".into() })
        })
    }

    fn read_inner(path: &Path) -> Result<Vec<ManifestRow>> {
        let merr = |what: String| FormatError::Manifest { path: path.to_path_buf(), what };
        let file = crate::regular::open_regular(path).map_err(|e| FormatError::io(path, "opening manifest", e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| merr(format!("not a readable Parquet file: {e}")))?;
        let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
        if get(VERSION_KEY).as_deref() != Some("1") {
            return Err(merr(format!("missing or unsupported {VERSION_KEY} (want 1)")));
        }
        let stored = get(ROWS_CHECKSUM_KEY).ok_or_else(|| merr(format!("missing {ROWS_CHECKSUM_KEY}")))?;
        let reader = builder.build().map_err(|e| merr(format!("reading: {e}")))?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| merr(format!("reading rows: {e}")))?;
            read_batch(&batch, &mut rows).map_err(&merr)?;
        }
        let actual = format!("{:016x}", rows_checksum(&rows)?);
        if actual != stored {
            return Err(merr(format!("row checksum mismatch: stored {stored}, computed {actual} (corrupt manifest)")));
        }
        Ok(rows)
    }

    /// The manifest's key-value metadata (version, checksum and any extra keys such as [`SKIPPED_KEY`]).
    pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
        let merr = |what: String| FormatError::Manifest { path: path.to_path_buf(), what };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let file = crate::regular::open_regular(path).map_err(|e| FormatError::io(path, "opening manifest", e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| merr(format!("not a readable Parquet file: {e}")))?;
            let kv = builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
            Ok(kv.into_iter().filter_map(|e| Some((e.key, e.value?))).collect())
        }))
        .unwrap_or_else(|_| Err(merr("corrupt Parquet footer (parquet reader panicked)".into())))
    }

    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }
}

/// Writes one record batch as a zstd-compressed Parquet file, atomically ([`AtomicFile`]), with key-value
/// metadata: the one Parquet writer of srcache (manifests, training metrics).
pub fn write_parquet(path: &Path, batch: &RecordBatch, metadata: &BTreeMap<String, String>) -> Result<()> {
    let merr = |what: String| FormatError::Manifest { path: path.to_path_buf(), what };
    let kv: Vec<KeyValue> = metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| merr(e.to_string()))?))
        .set_key_value_metadata((!kv.is_empty()).then_some(kv))
        .build();
    let file = AtomicFile::create(path)?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| merr(format!("parquet writer: {e}")))?;
    w.write(batch).map_err(|e| merr(format!("writing rows: {e}")))?;
    let file = w.into_inner().map_err(|e| merr(format!("closing parquet: {e}")))?;
    file.commit()
}

fn col<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> std::result::Result<&'b T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name:?}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column {name:?} has the wrong type"))
}

fn read_batch(batch: &RecordBatch, rows: &mut Vec<ManifestRow>) -> std::result::Result<(), String> {
    let sample_id = col::<StringArray>(batch, "sample_id")?;
    let shard = col::<StringArray>(batch, "shard")?;
    let index = col::<UInt64Array>(batch, "index")?;
    let source = col::<StringArray>(batch, "source")?;
    let variant = col::<StringArray>(batch, "variant")?;
    let [x, y, w, h] = [col::<UInt32Array>(batch, "x")?, col(batch, "y")?, col(batch, "w")?, col(batch, "h")?];
    let bytes = col::<UInt64Array>(batch, "bytes")?;
    let raw_bytes = col::<UInt64Array>(batch, "raw_bytes")?;
    let mut psnr_cols = Vec::new();
    for f in batch.schema().fields() {
        if let Some(e) = f.name().strip_prefix(PSNR_PREFIX) {
            psnr_cols.push((e.to_string(), col::<Float32Array>(batch, f.name())?));
        }
    }
    for i in 0..batch.num_rows() {
        let psnr = psnr_cols.iter().filter(|(_, c)| c.is_valid(i)).map(|(e, c)| (e.clone(), c.value(i))).collect();
        rows.push(ManifestRow {
            sample_id: sample_id.value(i).to_string(),
            shard: shard.value(i).to_string(),
            index: index.value(i),
            source: source.value(i).to_string(),
            variant: variant.value(i).to_string(),
            x: x.value(i),
            y: y.value(i),
            w: w.value(i),
            h: h.value(i),
            psnr,
            bytes: bytes.value(i),
            raw_bytes: raw_bytes.value(i),
        });
    }
    Ok(())
}

impl ManifestRow {
    /// The columns (other than shard and index) in which `self` and `other` differ: (column, self's value,
    /// other's value), as a person reads them. What `srcache verify` and `srcache diff` report.
    pub fn differences(&self, other: &ManifestRow) -> Vec<(&'static str, String, String)> {
        let mut d = Vec::new();
        let mut cmp = |what: &'static str, a: String, b: String| {
            if a != b {
                d.push((what, a, b));
            }
        };
        cmp("sample_id", format!("{:?}", self.sample_id), format!("{:?}", other.sample_id));
        cmp("source", format!("{:?}", self.source), format!("{:?}", other.source));
        cmp("variant", format!("{:?}", self.variant), format!("{:?}", other.variant));
        let patch = |r: &ManifestRow| format!("x{} y{} {}×{}", r.x, r.y, r.w, r.h);
        cmp("patch", patch(self), patch(other));
        let psnr = |r: &ManifestRow| r.psnr.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        cmp("psnr", psnr(self), psnr(other));
        cmp("bytes", self.bytes.to_string(), other.bytes.to_string());
        cmp("raw_bytes", self.raw_bytes.to_string(), other.raw_bytes.to_string());
        d
    }
}
