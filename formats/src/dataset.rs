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
use crate::files::{is_writer_temp, list_shards, shard_file_name};
use crate::layout::DatasetLayout;
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
    /// `schema`. Callers claim the directory first ([`crate::Ownership::claim`]).
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
