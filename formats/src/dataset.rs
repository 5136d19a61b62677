//! A dataset: a directory of `shard-NNNNN.srs` files plus `manifest.parquet`.
//!
//! Resumability rests on two facts: a shard exists under its final name only once complete (ShardWriter
//! renames on finish), and the producer's sample order is deterministic. So resuming = delete `*.tmp`,
//! count the samples in complete shards, have the producer skip that many, and continue numbering shards.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::EncodedTensor;
use crate::manifest::{Manifest, ManifestRow, MANIFEST_FILE, PARTS_KEY};
use crate::{FormatError, Result, SampleMeta, Schema, Shard, ShardSummary, ShardWriter};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetOptions {
    /// A shard is closed once its payloads reach this size (so shards end slightly above it).
    pub target_shard_bytes: u64,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions { target_shard_bytes: 2 << 30 }
    }
}

/// What was already on disk when a writer was opened: the producer skips `samples` samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resume {
    pub shards: u32,
    pub samples: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    pub shards: u32,
    pub samples: u64,
    /// Total shard file bytes.
    pub bytes: u64,
    /// Total logical (decoded) tensor bytes.
    pub raw_bytes: u64,
}

pub fn shard_file_name(n: u32) -> String {
    format!("shard-{n:05}.srs")
}

/// The shard number of a `shard-NNNNN.srs` file name.
fn shard_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("shard-")?.strip_suffix(".srs")?;
    (digits.len() >= 5 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Complete shards in `dir`, sorted; errors if their numbering has a gap (a shard was lost).
pub fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
    let mut found = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(n) = shard_number(&name) {
            found.push((n, ent.path()));
        }
    }
    found.sort();
    for (want, (n, p)) in found.iter().enumerate() {
        if *n as usize != want {
            return Err(FormatError::Corrupt {
                path: p.clone(),
                region: "dataset",
                what: format!("shard numbering has a gap: expected {}, found {}", shard_file_name(want as u32), shard_file_name(*n)),
            });
        }
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Whether `name` is a temporary file a [`DatasetWriter`] made: a shard or manifest being written
/// (`*.srcache-tmp`, or the `*.tmp` names of srcache before 0.2).
fn is_writer_temp(name: &str) -> bool {
    let stem = name.strip_suffix(crate::atomic::TMP_SUFFIX).or_else(|| name.strip_suffix(".tmp"));
    stem.is_some_and(|s| shard_number(s).is_some() || s == MANIFEST_FILE)
}

/// What an output directory holds before a producer writes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Does not exist yet.
    Missing,
    /// Exists and is empty.
    Empty,
    /// Holds only files srcache writes into a dataset (a previous or interrupted run).
    Dataset,
}

/// Refuses to write into a directory that holds anything but a dataset's own files (shards, manifest, the
/// writer's temporary files, `parts/`) and the producer's `sidecars` (e.g. `cache.toml`): srcache writes only
/// files it owns, so `--out ~` is refused instead of mixing a dataset into a home directory.
pub fn check_output_dir(dir: &Path, sidecars: &[&str]) -> Result<DirState> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(e) => return Err(FormatError::io(dir, "listing output directory", e)),
    };
    let mut any = false;
    let mut foreign = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| FormatError::io(dir, "listing output directory", e))?;
        any = true;
        let name = ent.file_name().to_string_lossy().into_owned();
        let ours = shard_number(&name).is_some()
            || name == MANIFEST_FILE
            || name == "parts"
            || is_writer_temp(&name)
            || sidecars.iter().any(|s| name == *s || crate::atomic::is_own_temp(&name, Some(s)) || name == format!("{s}.tmp"));
        if !ours {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
        return Err(FormatError::NotADataset {
            path: dir.to_path_buf(),
            what: format!(
                "holds files srcache did not write ({}{}); choose a new or empty output directory",
                shown.join(", "),
                if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() }
            ),
        });
    }
    Ok(if any { DirState::Dataset } else { DirState::Empty })
}

/// Where a dataset's shards and manifest are: a plain dataset (`shard-*.srs` + `manifest.parquet` in one
/// directory) or a merged root (a top-level `manifest.parquet` naming `parts/K-of-N/` datasets, see FORMAT.md).
#[derive(Debug, Clone)]
pub struct DatasetLayout {
    pub root: PathBuf,
    pub manifest: PathBuf,
    /// Every shard in dataset order: (name as the manifest writes it, path).
    pub shards: Vec<(String, PathBuf)>,
    /// Part directories relative to the root (merged roots only).
    pub parts: Option<Vec<String>>,
    /// Faults found while listing (a numbering gap, a missing part) for `verify` to report.
    pub problems: Vec<crate::Problem>,
}

impl DatasetLayout {
    pub fn discover(root: &Path) -> Result<DatasetLayout> {
        let manifest = Manifest::path_in(root);
        let parts = match manifest.exists() {
            true => Manifest::read_metadata(&manifest).ok().and_then(|kv| kv.get(PARTS_KEY).cloned()),
            false => None,
        };
        let mut problems = Vec::new();
        let mut shards = Vec::new();
        let parts = match parts {
            None => {
                if !root.is_dir() {
                    return Err(FormatError::NotADataset { path: root.to_path_buf(), what: "not a directory".into() });
                }
                match list_shards(root) {
                    Ok(list) => shards.extend(list.into_iter().map(|p| (file_name(&p), p))),
                    Err(e) => {
                        problems.push(crate::Problem { shard: root.to_path_buf(), sample: None, tensor: None, fault: crate::error_chain(&e) });
                        shards.extend(loose_shards(root)?.into_iter().map(|p| (file_name(&p), p)));
                    }
                }
                None
            }
            Some(json) => {
                let list: Vec<String> = serde_json::from_str(&json).map_err(|e| FormatError::Manifest {
                    path: manifest.clone(),
                    what: format!("{PARTS_KEY} is not a JSON list of part directories: {e}"),
                })?;
                for part in &list {
                    if !is_safe_relative(part) {
                        return Err(FormatError::Manifest {
                            path: manifest.clone(),
                            what: format!("part {part:?} is not a relative path inside the dataset"),
                        });
                    }
                    let dir = root.join(part);
                    match list_shards(&dir) {
                        Ok(l) => shards.extend(l.into_iter().map(|p| (format!("{part}/{}", file_name(&p)), p))),
                        Err(e) => problems.push(crate::Problem { shard: dir.clone(), sample: None, tensor: None, fault: crate::error_chain(&e) }),
                    }
                }
                Some(list)
            }
        };
        Ok(DatasetLayout { root: root.to_path_buf(), manifest, shards, parts, problems })
    }

    pub fn shard_names(&self) -> Vec<String> {
        self.shards.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Shard files present even when their numbering has a gap (so `verify` can still check them).
fn loose_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
    let mut v: Vec<PathBuf> = rd.flatten().filter(|e| shard_number(&e.file_name().to_string_lossy()).is_some()).map(|e| e.path()).collect();
    v.sort();
    Ok(v)
}

/// A path that stays inside the directory it is joined to (no absolute paths, no `..`).
pub(crate) fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

pub struct DatasetWriter {
    dir: PathBuf,
    schema: Schema,
    opts: DatasetOptions,
    current: Option<ShardWriter>,
    next_shard: u32,
    samples: u64,
    closed: Vec<ShardSummary>,
    metadata: BTreeMap<String, String>,
}

impl DatasetWriter {
    /// Opens `dir` for appending (creating it), deleting the temporary shard an interrupted run left
    /// (its own `shard-NNNNN.srs.srcache-tmp` names only). Existing complete shards must carry exactly
    /// `schema`. Callers check the directory first with [`check_output_dir`].
    pub fn create_or_resume(dir: &Path, schema: Schema, opts: DatasetOptions) -> Result<(Self, Resume)> {
        schema.validate()?;
        if opts.target_shard_bytes == 0 {
            return Err(FormatError::InvalidInput { what: "target_shard_bytes must be > 0".into() });
        }
        fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, "creating dataset directory", e))?;
        let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
        for ent in rd {
            let ent = ent.map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
            // Only the writer's own temporary names: never a file srcache did not create.
            if is_writer_temp(&ent.file_name().to_string_lossy()) {
                let p = ent.path();
                fs::remove_file(&p).map_err(|e| FormatError::io(&p, "removing leftover temporary shard", e))?;
            }
        }
        let mut resume = Resume::default();
        for path in list_shards(dir)? {
            let shard = Shard::open(&path)?;
            if shard.schema() != &schema {
                return Err(FormatError::SchemaMismatch {
                    path,
                    what: "existing shard was written with a different schema; use a fresh directory".into(),
                });
            }
            resume.shards += 1;
            resume.samples += shard.len() as u64;
        }
        let w = DatasetWriter {
            dir: dir.to_path_buf(),
            schema,
            opts,
            current: None,
            next_shard: resume.shards,
            samples: resume.samples,
            closed: Vec::new(),
            metadata: BTreeMap::new(),
        };
        Ok((w, resume))
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Samples in the dataset so far, including resumed ones.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn write_encoded(&mut self, meta: &SampleMeta, t: Vec<EncodedTensor>) -> Result<()> {
        let w = match &mut self.current {
            Some(w) => w,
            None => {
                let path = self.dir.join(shard_file_name(self.next_shard));
                self.next_shard += 1;
                self.current.insert(ShardWriter::try_new(&path, self.schema.clone())?)
            }
        };
        w.write_encoded(meta, t)?;
        self.samples += 1;
        if w.bytes_written() >= self.opts.target_shard_bytes {
            self.close_current()?;
        }
        Ok(())
    }

    /// Encodes and writes one sample (raw buffers in schema order; residual tensors get the sample's `lr`).
    pub fn write(&mut self, meta: &SampleMeta, raw: &[&[u8]]) -> Result<()> {
        if raw.len() != self.schema.tensors.len() {
            return Err(FormatError::InvalidInput {
                what: format!("sample {:?}: {} tensors given, schema has {}", meta.id, raw.len(), self.schema.tensors.len()),
            });
        }
        let enc = crate::codec::encode_sample(&self.schema, raw)?;
        self.write_encoded(meta, enc)
    }

    /// Extra key-value metadata for the manifest `finish` writes (e.g. [`crate::SKIPPED_KEY`]).
    pub fn set_manifest_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            self.closed.push(w.finish()?);
        }
        Ok(())
    }

    /// Closes the last shard and rebuilds the manifest from all shards on disk, so a resumed dataset's
    /// manifest is identical to an uninterrupted one's.
    pub fn finish(mut self) -> Result<DatasetSummary> {
        self.close_current()?;
        let rows: Vec<ManifestRow> = Manifest::from_shards(&self.dir)?;
        let manifest = Manifest::path_in(&self.dir);
        Manifest::write_with_metadata(&manifest, &rows, &self.metadata)?;
        let shards = list_shards(&self.dir)?;
        let mut bytes = 0;
        for p in &shards {
            bytes += fs::metadata(p).map_err(|e| FormatError::io(p, "reading shard size", e))?.len();
        }
        Ok(DatasetSummary {
            dir: self.dir,
            manifest,
            shards: shards.len() as u32,
            samples: rows.len() as u64,
            bytes,
            raw_bytes: rows.iter().map(|r| r.raw_bytes).sum(),
        })
    }
}

/// An open dataset: every shard mapped, the manifest loaded and checked row by row against the shards'
/// own metadata. Plain datasets and merged roots (see [`DatasetLayout`]) open the same way.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Shard names as the manifest writes them (`shard-00000.srs`, `parts/0-of-3/shard-00000.srs`).
    names: Vec<String>,
    /// starts[k] = global index of shard k's first sample; one extra entry = total.
    starts: Vec<usize>,
    manifest: Vec<ManifestRow>,
    parts: Option<Vec<String>>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset> {
        let layout = DatasetLayout::discover(dir)?;
        if let Some(p) = layout.problems.first() {
            return Err(FormatError::Corrupt { path: p.shard.clone(), region: "dataset", what: p.fault.clone() });
        }
        if layout.shards.is_empty() && !layout.manifest.exists() {
            return Err(FormatError::NotADataset { path: dir.to_path_buf(), what: "no shard-*.srs files and no manifest.parquet".into() });
        }
        let mut shards: Vec<Shard> = Vec::with_capacity(layout.shards.len());
        let mut starts = vec![0];
        for (_, p) in &layout.shards {
            let s = Shard::open(p)?;
            if let Some(first) = shards.first() {
                if first.schema() != s.schema() {
                    return Err(FormatError::SchemaMismatch { path: p.clone(), what: format!("schema differs from {}", first.path().display()) });
                }
            } else {
                s.schema().check_sr_layout().map_err(|what| FormatError::SchemaMismatch { path: p.clone(), what })?;
            }
            starts.push(starts[starts.len() - 1] + s.len());
            shards.push(s);
        }
        let manifest = Manifest::read(&layout.manifest)?;
        let names = layout.shard_names();
        let refs: Vec<(&str, &Shard)> = names.iter().map(String::as_str).zip(&shards).collect();
        let problems = crate::verify::cross_check(&layout.manifest, &manifest, &refs, &names);
        if let Some(first) = problems.first() {
            return Err(FormatError::Manifest {
                path: layout.manifest.clone(),
                what: format!(
                    "does not match the shards ({} problem(s); first: {}); run `srcache verify {}`",
                    problems.len(),
                    first.fault,
                    dir.display()
                ),
            });
        }
        Ok(Dataset { dir: dir.to_path_buf(), shards, names, starts, manifest, parts: layout.parts })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Shard names as the manifest writes them, in dataset order.
    pub fn shard_names(&self) -> &[String] {
        &self.names
    }

    /// Part directories of a merged root (None for a plain dataset).
    pub fn parts(&self) -> Option<&[String]> {
        self.parts.as_deref()
    }

    /// The common schema (None for a dataset without shards).
    pub fn schema(&self) -> Option<&Schema> {
        self.shards.first().map(Shard::schema)
    }

    pub fn manifest(&self) -> &[ManifestRow] {
        &self.manifest
    }

    /// Global sample index -> (shard, index within it).
    pub fn sample(&self, global: usize) -> Result<(&Shard, usize)> {
        if global >= self.len() {
            return Err(FormatError::SampleOutOfRange { path: self.dir.clone(), sample: global, len: self.len() });
        }
        let k = self.starts.partition_point(|&s| s <= global) - 1;
        Ok((&self.shards[k], global - self.starts[k]))
    }

    /// Global index of the sample with this id (a linear scan of the manifest).
    pub fn find(&self, id: &str) -> Option<usize> {
        self.manifest.iter().position(|r| r.sample_id == id)
    }
}
