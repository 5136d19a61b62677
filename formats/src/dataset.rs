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
use crate::manifest::{Manifest, ManifestRow};
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

/// Complete shards in `dir`, sorted; errors if their numbering has a gap (a shard was lost).
pub(crate) fn list_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
    let mut found = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("shard-").and_then(|r| r.strip_suffix(".srs")).and_then(|d| d.parse::<u32>().ok()) {
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
    /// Opens `dir` for appending (creating it), deleting leftover `*.tmp` files from an interrupted run.
    /// Existing complete shards must carry exactly `schema`.
    pub fn create_or_resume(dir: &Path, schema: Schema, opts: DatasetOptions) -> Result<(Self, Resume)> {
        schema.validate()?;
        if opts.target_shard_bytes == 0 {
            return Err(FormatError::InvalidInput { what: "target_shard_bytes must be > 0".into() });
        }
        fs::create_dir_all(dir).map_err(|e| FormatError::io(dir, "creating dataset directory", e))?;
        let rd = fs::read_dir(dir).map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
        for ent in rd {
            let ent = ent.map_err(|e| FormatError::io(dir, "listing dataset directory", e))?;
            if ent.file_name().to_string_lossy().ends_with(".tmp") {
                let p = ent.path();
                fs::remove_file(&p).map_err(|e| FormatError::io(&p, "removing leftover temp file", e))?;
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

    /// Encodes and writes one sample (raw buffers in schema order).
    pub fn write(&mut self, meta: &SampleMeta, raw: &[&[u8]]) -> Result<()> {
        if raw.len() != self.schema.tensors.len() {
            return Err(FormatError::InvalidInput {
                what: format!("sample {:?}: {} tensors given, schema has {}", meta.id, raw.len(), self.schema.tensors.len()),
            });
        }
        let enc = self.schema.tensors.iter().zip(raw).map(|(s, r)| crate::encode(s, r)).collect::<Result<Vec<_>>>()?;
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

/// An open dataset: every shard mapped, the manifest loaded and cross-checked against the shards.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// starts[k] = global index of shard k's first sample; one extra entry = total.
    starts: Vec<usize>,
    manifest: Vec<ManifestRow>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset> {
        let mut shards = Vec::new();
        let mut starts = vec![0];
        for p in list_shards(dir)? {
            let s = Shard::open(&p)?;
            if let Some(first) = shards.first() {
                let first: &Shard = first;
                if first.schema() != s.schema() {
                    return Err(FormatError::SchemaMismatch {
                        path: p,
                        what: format!("schema differs from {}", first.path().display()),
                    });
                }
            }
            starts.push(starts[starts.len() - 1] + s.len());
            shards.push(s);
        }
        let mpath = Manifest::path_in(dir);
        let manifest = Manifest::read(&mpath)?;
        let total = starts[starts.len() - 1];
        if manifest.len() != total {
            return Err(FormatError::Manifest {
                path: mpath,
                what: format!("{} rows but the shards hold {total} samples (stale manifest?)", manifest.len()),
            });
        }
        Ok(Dataset { dir: dir.to_path_buf(), shards, starts, manifest })
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
}
