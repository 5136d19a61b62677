//! The shard container: header + schema, 64-byte aligned payloads, fixed-size index table + sample
//! metadata, footer. Byte layout in FORMAT.md; keep the two in sync.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::atomic::{sync_dir, tmp_path};
use crate::codec::{self, EncodedTensor};
use crate::{Codec, CodecError, FormatError, Problem, ResidualBase, Result, SampleMeta, Schema, TensorSpec};

/// PNG-style magic: a non-ASCII first byte and CR/LF/^Z catch text-mode and 7-bit transfer damage.
pub const MAGIC: [u8; 8] = *b"\x89SRS\r\n\x1a\n";
pub const MAGIC_END: [u8; 8] = *b"\x89SRSEND\n";
pub const FORMAT_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 64;
pub(crate) const FOOTER_LEN: usize = 64;
pub(crate) const ENTRY_LEN: usize = 32;
/// Payload alignment: a cache line, and enough for any dtype and for SIMD loads on zero-copy views.
pub(crate) const ALIGN: u64 = 64;
const ZEROS: [u8; 64] = [0; 64];

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// What `finish` reports about a written shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub samples: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// Sum of the tensors' logical (decoded) sizes.
    pub raw_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    len: u64,
    raw_len: u64,
    checksum: u64,
}

/// Streams a shard to `<path>.tmp`; `finish` writes the index and footer, fsyncs and renames, so a reader
/// never sees a shard without its footer under the final name.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    schema: Schema,
    pos: u64,
    entries: Vec<Entry>,
    metas: Vec<SampleMeta>,
    raw_bytes: u64,
}

impl ShardWriter {
    pub fn try_new(path: &Path, schema: Schema) -> Result<Self> {
        schema.validate()?;
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| FormatError::io(&tmp, "creating shard", e))?;
        let schema_json = serde_json::to_vec(&schema).map_err(|e| FormatError::InvalidInput { what: format!("schema does not serialize: {e}") })?;
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header[16..24].copy_from_slice(&(schema_json.len() as u64).to_le_bytes());
        header[24..32].copy_from_slice(&xxh3_64(&schema_json).to_le_bytes());
        let hsum = xxh3_64(&header[..56]);
        header[56..64].copy_from_slice(&hsum.to_le_bytes());
        let mut w = ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            schema,
            pos: 0,
            entries: Vec::new(),
            metas: Vec::new(),
            raw_bytes: 0,
        };
        w.put(&header)?;
        w.put(&schema_json)?;
        w.pad()?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|e| FormatError::io(&self.tmp, "writing shard", e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (align_up(self.pos) - self.pos) as usize;
        self.put(&ZEROS[..n])
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes `raw` (one little-endian buffer per schema tensor, in schema order) and appends the sample.
    /// Residual tensors get the sample's `lr` buffer as their base.
    pub fn write(&mut self, meta: &SampleMeta, raw: &[&[u8]]) -> Result<()> {
        if raw.len() != self.schema.tensors.len() {
            return Err(FormatError::InvalidInput {
                what: format!("sample {:?}: {} tensors given, schema has {}", meta.id, raw.len(), self.schema.tensors.len()),
            });
        }
        let enc = codec::encode_sample(&self.schema, raw)?;
        self.write_encoded(meta, enc)
    }

    /// Appends a sample whose tensors were encoded elsewhere (with `encode` and this shard's specs).
    pub fn write_encoded(&mut self, meta: &SampleMeta, t: Vec<EncodedTensor>) -> Result<()> {
        if t.len() != self.schema.tensors.len() {
            return Err(FormatError::InvalidInput {
                what: format!("sample {:?}: {} tensors given, schema has {}", meta.id, t.len(), self.schema.tensors.len()),
            });
        }
        for (spec, e) in self.schema.tensors.iter().zip(&t) {
            let want = spec.raw_len().map(|n| n as u64);
            let fixed = codec::fixed_stored_len(spec);
            if Some(e.raw_len) != want || fixed.is_some_and(|f| f != e.bytes.len() as u64) {
                return Err(FormatError::Encode {
                    tensor: spec.name.clone(),
                    what: format!("encoded tensor does not match spec {} {:?} {}", spec.dtype, spec.shape, spec.codec),
                });
            }
        }
        for e in &t {
            self.pad()?;
            let offset = self.pos;
            self.put(&e.bytes)?;
            self.entries.push(Entry { offset, len: e.bytes.len() as u64, raw_len: e.raw_len, checksum: e.checksum });
            self.raw_bytes += e.raw_len;
        }
        self.metas.push(meta.clone());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Bytes written so far (header, schema and payloads; the index comes at `finish`).
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    pub fn finish(mut self) -> Result<ShardSummary> {
        self.pad()?;
        let index_offset = self.pos;
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            for v in [e.offset, e.len, e.raw_len, e.checksum] {
                index.extend_from_slice(&v.to_le_bytes());
            }
        }
        let table_len = index.len() as u64;
        let metas =
            serde_json::to_vec(&self.metas).map_err(|e| FormatError::InvalidInput { what: format!("sample metadata does not serialize: {e}") })?;
        index.extend_from_slice(&metas);
        let mut footer = [0u8; FOOTER_LEN];
        footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
        footer[8..16].copy_from_slice(&table_len.to_le_bytes());
        footer[16..24].copy_from_slice(&(metas.len() as u64).to_le_bytes());
        footer[24..32].copy_from_slice(&(self.metas.len() as u64).to_le_bytes());
        footer[32..40].copy_from_slice(&xxh3_64(&index).to_le_bytes());
        footer[40..44].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        footer[44..48].copy_from_slice(&(self.schema.tensors.len() as u32).to_le_bytes());
        let fsum = xxh3_64(&footer[..48]);
        footer[48..56].copy_from_slice(&fsum.to_le_bytes());
        footer[56..64].copy_from_slice(&MAGIC_END);
        self.put(&index)?;
        self.put(&footer)?;
        let tmp = self.tmp.clone();
        let file = self.out.into_inner().map_err(|e| FormatError::io(&tmp, "flushing shard", e.into_error()))?;
        file.sync_all().map_err(|e| FormatError::io(&tmp, "fsyncing shard", e))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(|e| FormatError::io(&self.path, "renaming shard into place", e))?;
        sync_dir(&self.path)?;
        Ok(ShardSummary { path: self.path, samples: self.metas.len(), bytes: self.pos, raw_bytes: self.raw_bytes })
    }
}

thread_local! {
    // The decoded lr of a residual tensor whose lr is not stored raw, reused per thread (training hot path).
    static LR_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// 64-byte aligned owned storage, so `from_bytes` shards give aligned zero-copy views like mmapped ones.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

enum Backing {
    /// The mapped file, kept open so its length can be re-checked: a file truncated under a map makes any
    /// access past the new end fault (SIGBUS) instead of returning an error.
    Map {
        map: Mmap,
        file: File,
        _registered: crate::sigbus::Registration,
    },
    Owned {
        lines: Vec<Line>,
        len: usize,
    },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map { map, .. } => map,
            Backing::Owned { lines, len } => {
                // SAFETY: Line is repr(C) [u8; 64] with no padding; the Vec holds lines.len()*64 initialised bytes.
                let all = unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 64) };
                &all[..*len]
            }
        }
    }
}

/// An open, validated shard. Header, schema, index and metadata are checked on open; a payload's checksum is
/// checked the first time it is read through this `Shard` ([`TensorView::raw`], [`TensorView::decode_into`]),
/// and [`TensorView::check`] / [`Shard::verify`] always re-hash. Once-per-payload is what lets a loader read a
/// cached epoch at memory speed: hashing on every read costs as much as the copy itself, while the file is
/// immutable once finished, so a second hash of the same mapped bytes could only find what the first did.
pub struct Shard {
    path: PathBuf,
    data: Backing,
    schema: Schema,
    entries: Vec<Entry>,
    metas: Vec<SampleMeta>,
    /// One bit per entry: checksum already verified.
    verified: Vec<AtomicU64>,
    /// Per schema tensor: the base of a residual_u8 tensor.
    bases: Vec<Option<ResidualBase>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("path", &self.path).field("samples", &self.metas.len()).finish()
    }
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = crate::regular::open_regular(path).map_err(|e| FormatError::io(path, "opening shard", e))?;
        // SAFETY: shards are immutable once renamed into place; srcache never writes a finished shard. Another
        // process truncating one underneath us is outside the contract: `check_unchanged` catches it before each
        // tensor access, and the SIGBUS handler (`sigbus`) names the shard if it happens between check and read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, "mapping shard", e))?;
        let registered = crate::sigbus::Registration::new(map.as_ptr() as usize, map.len(), path);
        Shard::parse(path.to_path_buf(), Backing::Map { map, file, _registered: registered })
    }

    /// A shard over bytes in memory (copied into 64-byte aligned storage); `name` stands in for the path.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Shard> {
        let len = bytes.len();
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        for (l, c) in lines.iter_mut().zip(bytes.chunks(64)) {
            l.0[..c.len()].copy_from_slice(c);
        }
        Shard::parse(PathBuf::from(name), Backing::Owned { lines, len })
    }

    fn parse(path: PathBuf, data: Backing) -> Result<Shard> {
        let b = data.bytes();
        let have = b.len() as u64;
        let trunc = |what, need: u64| FormatError::Truncated { path: path.clone(), what, need, have };
        let corrupt = |region, what: String| FormatError::Corrupt { path: path.clone(), region, what };
        if b.len() < 8 {
            return Err(trunc("magic", 8));
        }
        if b[..8] != MAGIC {
            return Err(FormatError::BadMagic { path, what: "header", found: b[..8].to_vec() });
        }
        if b.len() < 12 {
            return Err(trunc("version", 12));
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { path, version, supported: FORMAT_VERSION });
        }
        if b.len() < HEADER_LEN + FOOTER_LEN {
            return Err(trunc("header and footer", (HEADER_LEN + FOOTER_LEN) as u64));
        }
        let header = &b[..HEADER_LEN];
        let hsum = xxh3_64(&header[..56]);
        if hsum != u64_at(header, 56) {
            return Err(FormatError::RegionChecksum { path, region: "header", expected: u64_at(header, 56), actual: hsum });
        }
        let schema_len = u64_at(header, 16);
        let schema_end = (HEADER_LEN as u64).checked_add(schema_len).ok_or_else(|| corrupt("header", "schema length overflows".into()))?;
        if schema_end > have {
            return Err(trunc("schema", schema_end));
        }
        let schema_bytes = &b[HEADER_LEN..schema_end as usize];
        let ssum = xxh3_64(schema_bytes);
        if ssum != u64_at(header, 24) {
            return Err(FormatError::RegionChecksum { path, region: "schema", expected: u64_at(header, 24), actual: ssum });
        }
        let schema: Schema = serde_json::from_slice(schema_bytes).map_err(|e| corrupt("schema", format!("bad JSON: {e}")))?;
        schema.validate().map_err(|e| corrupt("schema", e.to_string()))?;
        let payload_start = align_up(schema_end);

        // The footer is found from the end, so a file cut anywhere loses its footer magic.
        let footer = &b[b.len() - FOOTER_LEN..];
        if footer[56..64] != MAGIC_END {
            return Err(if b.windows(8).rev().take(1 << 16).any(|w| w == MAGIC_END) {
                corrupt("footer", "footer magic is not at the end of the file (trailing bytes?)".into())
            } else {
                FormatError::Truncated { path, what: "footer (no end magic: the shard was cut short)", need: have + 1, have }
            });
        }
        let fsum = xxh3_64(&footer[..48]);
        if fsum != u64_at(footer, 48) {
            return Err(FormatError::RegionChecksum { path, region: "footer", expected: u64_at(footer, 48), actual: fsum });
        }
        let fversion = u32_at(footer, 40);
        if fversion != version {
            return Err(corrupt("footer", format!("footer version {fversion} != header version {version}")));
        }
        let (index_offset, table_len, meta_len, n_samples) = (u64_at(footer, 0), u64_at(footer, 8), u64_at(footer, 16), u64_at(footer, 24));
        let n_tensors = u32_at(footer, 44) as usize;
        if n_tensors != schema.tensors.len() {
            return Err(FormatError::SchemaMismatch {
                path,
                what: format!("footer says {n_tensors} tensors per sample, schema has {}", schema.tensors.len()),
            });
        }
        let index_end = index_offset.checked_add(table_len).and_then(|x| x.checked_add(meta_len));
        if index_offset < payload_start || index_end != Some(have - FOOTER_LEN as u64) {
            return Err(corrupt(
                "footer",
                format!("index at {index_offset} (+{table_len} +{meta_len}) does not end at the footer ({})", have - FOOTER_LEN as u64),
            ));
        }
        if n_samples.checked_mul(n_tensors as u64).and_then(|x| x.checked_mul(ENTRY_LEN as u64)) != Some(table_len) {
            return Err(corrupt("footer", format!("{n_samples} samples x {n_tensors} tensors do not fill a {table_len}-byte table")));
        }
        let index = &b[index_offset as usize..(index_offset + table_len + meta_len) as usize];
        let isum = xxh3_64(index);
        if isum != u64_at(footer, 32) {
            return Err(FormatError::RegionChecksum { path, region: "index", expected: u64_at(footer, 32), actual: isum });
        }
        let (table, meta_bytes) = index.split_at(table_len as usize);
        let metas: Vec<SampleMeta> = serde_json::from_slice(meta_bytes).map_err(|e| corrupt("sample metadata", format!("bad JSON: {e}")))?;
        if metas.len() as u64 != n_samples {
            return Err(corrupt("sample metadata", format!("{} records for {n_samples} samples", metas.len())));
        }
        let mut entries = Vec::with_capacity(table.len() / ENTRY_LEN);
        for (k, c) in table.chunks_exact(ENTRY_LEN).enumerate() {
            let e = Entry { offset: u64_at(c, 0), len: u64_at(c, 8), raw_len: u64_at(c, 16), checksum: u64_at(c, 24) };
            let spec = &schema.tensors[k % n_tensors];
            let bad = |what: String| FormatError::CorruptEntry { path: path.clone(), sample: k / n_tensors, tensor: spec.name.clone(), what };
            if e.offset < payload_start || !e.offset.is_multiple_of(ALIGN) || e.offset.checked_add(e.len).is_none_or(|end| end > index_offset) {
                return Err(bad(format!("payload [{}, +{}) outside the payload area [{payload_start}, {index_offset})", e.offset, e.len)));
            }
            if Some(e.raw_len) != spec.raw_len().map(|n| n as u64) {
                return Err(bad(format!("raw length {} does not match {} {:?}", e.raw_len, spec.dtype, spec.shape)));
            }
            if let Some(f) = codec::fixed_stored_len(spec) {
                if f != e.len {
                    return Err(bad(format!("{} payload is {} bytes, expected {f}", spec.codec, e.len)));
                }
            } else if codec::zstd_content_len(spec).is_none_or(|n| n > codec::zstd_max_expansion(e.len)) {
                let n = codec::zstd_content_len(spec).map_or("too many".into(), |n| n.to_string());
                return Err(bad(format!("claims {n} bytes from a {}-byte {} payload: more than zstd can expand", e.len, spec.codec)));
            }
            entries.push(e);
        }
        let verified = (0..entries.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        // validate() has checked every residual tensor's base.
        let bases = (0..schema.tensors.len()).map(|t| schema.tensors[t].codec.needs_base().then(|| schema.residual_base(t).ok()).flatten()).collect();
        Ok(Shard { path, data, schema, entries, metas, verified, bases })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    pub fn metas(&self) -> &[SampleMeta] {
        &self.metas
    }

    fn check_sample(&self, i: usize) -> Result<()> {
        if i >= self.metas.len() {
            return Err(FormatError::SampleOutOfRange { path: self.path.clone(), sample: i, len: self.metas.len() });
        }
        Ok(())
    }

    pub fn meta(&self, i: usize) -> Result<&SampleMeta> {
        self.check_sample(i)?;
        Ok(&self.metas[i])
    }

    /// (stored payload bytes, logical bytes) of sample `i`.
    pub fn sample_bytes(&self, i: usize) -> Result<(u64, u64)> {
        self.check_sample(i)?;
        let n = self.schema.tensors.len();
        Ok(self.entries[i * n..(i + 1) * n].iter().fold((0, 0), |(a, b), e| (a + e.len, b + e.raw_len)))
    }

    pub fn tensor(&self, i: usize, name: &str) -> Result<TensorView<'_>> {
        let t = self.schema.index_of(name).ok_or_else(|| FormatError::UnknownTensor {
            path: self.path.clone(),
            name: name.to_string(),
            have: self.schema.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        self.tensor_at(i, t)
    }

    /// Errors if the mapped file has been truncated since it was opened (reading it would fault).
    pub fn check_unchanged(&self) -> Result<()> {
        if let Backing::Map { map, file, .. } = &self.data {
            let now = file.metadata().map_err(|e| FormatError::io(&self.path, "checking shard size", e))?.len();
            if now < map.len() as u64 {
                return Err(FormatError::Changed { path: self.path.clone(), what: format!("{} bytes when opened, {now} now", map.len()) });
            }
        }
        Ok(())
    }

    /// Tensor by schema position (avoids the name lookup in hot loops).
    pub fn tensor_at(&self, i: usize, t: usize) -> Result<TensorView<'_>> {
        self.check_sample(i)?;
        self.check_unchanged()?;
        let n = self.schema.tensors.len();
        let spec = self
            .schema
            .tensors
            .get(t)
            .ok_or_else(|| FormatError::InvalidInput { what: format!("tensor position {t} out of range ({n} tensors)") })?;
        let e = self.entries[i * n + t];
        // Bounds were validated on open; `get` keeps this panic-free regardless.
        let payload = self.data.bytes().get(e.offset as usize..(e.offset + e.len) as usize).ok_or_else(|| FormatError::CorruptEntry {
            path: self.path.clone(),
            sample: i,
            tensor: spec.name.clone(),
            what: "payload out of bounds".into(),
        })?;
        Ok(TensorView { shard: self, sample: i, entry: i * n + t, t, spec, payload, checksum: e.checksum })
    }

    /// Checks every payload checksum and that every payload decodes; one Problem per fault.
    pub fn verify(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut buf = Vec::new();
        for i in 0..self.len() {
            for t in 0..self.schema.tensors.len() {
                let r = self.tensor_at(i, t).and_then(|v| {
                    v.check()?;
                    if !matches!(v.spec.codec, Codec::Raw) {
                        if buf.len() < v.raw_len() {
                            buf = v.alloc_raw()?;
                        }
                        v.decode_unchecked(&mut buf[..v.raw_len()])?;
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    let tensor = self.schema.tensors[t].name.clone();
                    // The Problem prints shard, sample and tensor itself: keep only what went wrong.
                    let chain = crate::error_chain(&e);
                    let fault = chain.strip_prefix(&format!("{}: ", self.path.display())).unwrap_or(&chain);
                    let fault = fault.strip_prefix(&format!("sample {i}, tensor {tensor:?}: ")).unwrap_or(fault).to_string();
                    problems.push(Problem { shard: self.path.clone(), sample: Some(i), tensor: Some(tensor), fault });
                }
            }
        }
        problems
    }
}

/// One tensor of one sample, borrowed from the shard's map.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    shard: &'a Shard,
    sample: usize,
    /// Index into the shard's entries (for the verified bitmap).
    entry: usize,
    /// Position in the schema.
    t: usize,
    spec: &'a TensorSpec,
    payload: &'a [u8],
    checksum: u64,
}

impl<'a> TensorView<'a> {
    pub fn spec(&self) -> &'a TensorSpec {
        self.spec
    }

    pub fn sample(&self) -> usize {
        self.sample
    }

    /// Logical (decoded) length in bytes.
    pub fn raw_len(&self) -> usize {
        self.spec.raw_len().unwrap_or(0)
    }

    /// The stored payload (after the codec), unchecked.
    pub fn stored(&self) -> &'a [u8] {
        self.payload
    }

    /// Verifies the payload checksum.
    pub fn check(&self) -> Result<()> {
        let actual = xxh3_64(self.payload);
        if actual != self.checksum {
            return Err(FormatError::PayloadChecksum {
                path: self.shard.path.clone(),
                sample: self.sample,
                tensor: self.spec.name.clone(),
                expected: self.checksum,
                actual,
            });
        }
        Ok(())
    }

    /// [`TensorView::check`] unless this payload already passed it through the same `Shard`.
    fn check_once(&self) -> Result<()> {
        let (word, bit) = (self.entry / 64, 1u64 << (self.entry % 64));
        let flags = self.shard.verified.get(word);
        if flags.is_some_and(|f| f.load(Ordering::Relaxed) & bit != 0) {
            return Ok(());
        }
        self.check()?;
        if let Some(f) = flags {
            f.fetch_or(bit, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Zero-copy bytes (64-byte aligned) iff the codec is Raw; checksum checked (once per payload). None for
    /// every other codec, residual_u8 included.
    pub fn raw(&self) -> Result<Option<&'a [u8]>> {
        if self.spec.codec != Codec::Raw {
            return Ok(None);
        }
        self.check_once()?;
        Ok(Some(self.payload))
    }

    fn decode_error(&self, source: CodecError) -> FormatError {
        FormatError::Decode {
            path: self.shard.path.clone(),
            sample: self.sample,
            tensor: self.spec.name.clone(),
            codec: self.spec.codec.to_string(),
            source,
        }
    }

    /// Decodes this payload (its own checksum not checked here). A residual tensor first reads its base, the
    /// same sample's `lr`, through the same `Shard` (checksum checked once, like any read).
    fn decode_unchecked(&self, out: &mut [u8]) -> Result<()> {
        let Some(base) = self.shard.bases.get(self.t).copied().flatten() else {
            return codec::decode_payload(self.spec, self.payload, out).map_err(|e| self.decode_error(e));
        };
        let unreadable = |e: FormatError| self.decode_error(CodecError::BaseUnreadable { what: crate::error_chain(&e) });
        let lr = self.shard.tensor_at(self.sample, base.lr).map_err(unreadable)?;
        if let Some(bytes) = lr.raw().map_err(unreadable)? {
            return codec::decode_payload_with_base(self.spec, self.payload, Some(bytes), out).map_err(|e| self.decode_error(e));
        }
        LR_SCRATCH.with(|sc| {
            // lr is never residual itself (validate), so this cannot nest; a fresh buffer if it ever did.
            let mut fresh = Vec::new();
            let mut guard = sc.try_borrow_mut().ok();
            let buf = guard.as_deref_mut().unwrap_or(&mut fresh);
            buf.clear();
            buf.try_reserve_exact(lr.raw_len()).map_err(|_| unreadable(lr.alloc_error()))?;
            buf.resize(lr.raw_len(), 0);
            lr.decode_into(buf).map_err(unreadable)?;
            codec::decode_payload_with_base(self.spec, self.payload, Some(buf), out).map_err(|e| self.decode_error(e))
        })
    }

    fn alloc_error(&self) -> FormatError {
        FormatError::Alloc { path: self.shard.path.clone(), sample: self.sample, tensor: self.spec.name.clone(), bytes: self.raw_len() as u64 }
    }

    /// A zeroed buffer of the logical length, or an error (never an abort) when it cannot be allocated.
    pub fn alloc_raw(&self) -> Result<Vec<u8>> {
        let n = self.raw_len();
        let mut out = Vec::new();
        out.try_reserve_exact(n).map_err(|_| self.alloc_error())?;
        out.resize(n, 0);
        Ok(out)
    }

    /// Decodes into `out` (exactly `raw_len()` bytes, little-endian logical dtype); checksum checked first
    /// (once per payload). A residual_u8 tensor reads and checks the same sample's `lr` too.
    pub fn decode_into(&self, out: &mut [u8]) -> Result<()> {
        self.check_once()?;
        self.decode_unchecked(out)
    }

    /// Where a residual_u8 tensor's base comes from (lr's schema position, h, w, scale); None for every other
    /// codec.
    pub fn residual_base(&self) -> Option<ResidualBase> {
        self.shard.bases.get(self.t).copied().flatten()
    }

    /// [`TensorView::decode_into`] given this sample's residual base already upscaled: `upscaled` is
    /// B(lr) of the same sample's `lr` ([`crate::residual::bicubic_u8_into`] with [`TensorView::residual_base`]'s
    /// h, w, s), `raw_len()` bytes. A sample with several experts computes B once instead of once per expert
    /// (and decodes lr once). The caller read lr through this shard, which checked its checksum; this
    /// payload's own checksum is checked here (once). Other codecs ignore `upscaled`.
    pub fn decode_into_upscaled(&self, upscaled: &[u8], out: &mut [u8]) -> Result<()> {
        if self.residual_base().is_none() {
            return self.decode_into(out);
        }
        self.check_once()?;
        codec::decode_residual_upscaled(self.spec, self.payload, upscaled, out).map_err(|e| self.decode_error(e))
    }

    pub fn decode(&self) -> Result<Vec<u8>> {
        let mut out = self.alloc_raw()?;
        self.decode_into(&mut out)?;
        Ok(out)
    }

    /// Values as f32 whatever the dtype (u8 stays 0..255, not normalised).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        match self.raw()? {
            Some(r) => codec::to_f32_into(self.spec.dtype, r, &mut out),
            None => codec::to_f32_into(self.spec.dtype, &self.decode()?, &mut out),
        }
        Ok(out)
    }

    /// For AffineU8 / AffineU8Zstd tensors: the worst-case quantisation error over channels (max scale / 2),
    /// which `inspect` reports; None for lossless codecs (and for a payload whose parameters do not read).
    pub fn affine_error_bound(&self) -> Option<f32> {
        let params = match self.spec.codec {
            Codec::AffineU8 => codec::affine_params(self.spec, self.payload),
            Codec::AffineU8Zstd { .. } => codec::affine_zstd_params(self.spec, self.payload),
            _ => None,
        };
        params.map(|p| p.iter().fold(0.0f32, |m, &(s, _)| m.max(s / 2.0)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::{residual, DType, SampleMeta};

    /// [3, side, side] crops of a real photo (CHW u8) and their box-downscaled LR.
    fn photo_patches(side: usize, s: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingest/assets/photos/chelsea.png");
        let img = image::open(&path).unwrap().to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        (0..n)
            .map(|k| {
                let (y0, x0) = ((h - side) * k / n.max(2), (w - side) * (n - k) / (n + 1));
                let hr: Vec<u8> =
                    (0..3 * side * side).map(|i| img.get_pixel((x0 + i % side) as u32, (y0 + i / side % side) as u32)[i / (side * side)]).collect();
                let p = side / s;
                let lr: Vec<u8> = (0..3 * p * p)
                    .map(|i| {
                        let (c, y, x) = (i / (p * p), i / p % p, i % p);
                        let sum: u32 = (0..s * s).map(|j| hr[c * side * side + (y * s + j / s) * side + x * s + j % s] as u32).sum();
                        ((sum + (s * s / 2) as u32) / (s * s) as u32) as u8
                    })
                    .collect();
                (hr, lr)
            })
            .collect()
    }

    #[test]
    fn residual_decoded_against_a_shared_base_is_the_one_tensor_decode() {
        let (p, s) = (16, 4);
        for lr_codec in [Codec::Raw, Codec::ZSTD] {
            let mut schema = Schema::new(vec![
                TensorSpec::new("lr", DType::U8, &[3, p, p], lr_codec),
                TensorSpec::new("sr/a", DType::U8, &[3, s * p, s * p], Codec::RESIDUAL_U8),
                TensorSpec::new("sr/b", DType::U8, &[3, s * p, s * p], Codec::RESIDUAL_U8),
            ]);
            schema.attrs.insert("scale".into(), s.to_string());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.srshard");
            let mut w = ShardWriter::try_new(&path, schema).unwrap();
            let patches = photo_patches(s * p, s, 3);
            for (i, (hr, lr)) in patches.iter().enumerate() {
                // Two experts: the ground truth itself, and B(lr) brightened (residual far from 0, wrapping).
                let b: Vec<u8> = residual::bicubic_u8(lr, p, p, s).iter().map(|v| v.wrapping_add(90)).collect();
                let meta = SampleMeta { id: format!("s{i}"), ..Default::default() };
                w.write(&meta, &[lr, hr, &b]).unwrap();
            }
            w.finish().unwrap();
            let shard = Shard::open(&path).unwrap();
            assert_eq!(shard.len(), patches.len());
            for (i, (hr, _)) in patches.iter().enumerate() {
                let lr = shard.tensor(i, "lr").unwrap().decode().unwrap();
                let rb = shard.tensor(i, "sr/a").unwrap().residual_base().unwrap();
                assert_eq!((rb.h, rb.w, rb.s, rb.lr), (p, p, s, 0));
                let mut up = vec![0u8; lr.len() * s * s];
                residual::bicubic_u8_into(&lr, rb.h, rb.w, rb.s, &mut up);
                for name in ["sr/a", "sr/b"] {
                    let v = shard.tensor(i, name).unwrap();
                    let old = v.decode().unwrap();
                    let mut new = vec![0u8; v.raw_len()];
                    v.decode_into_upscaled(&up, &mut new).unwrap();
                    assert_eq!(new, old, "{lr_codec} sample {i} {name}");
                }
                assert_eq!(&shard.tensor(i, "sr/a").unwrap().decode().unwrap(), hr);
                // A base of the wrong size is an error, not a panic; lr (not residual) ignores it.
                let v = shard.tensor(i, "sr/a").unwrap();
                let mut out = vec![0u8; v.raw_len()];
                assert!(v.decode_into_upscaled(&up[1..], &mut out).is_err());
                let l = shard.tensor(i, "lr").unwrap();
                let mut out = vec![0u8; l.raw_len()];
                l.decode_into_upscaled(&[], &mut out).unwrap();
                assert_eq!(out, lr);
            }
        }
    }
}
