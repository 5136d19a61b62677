//! The names of a dataset's files: shards (`shard-NNNNN.srs`), the manifest, the writer's temporary files and
//! the `parts/` folder of a merged root. The bottom of the crate's module graph: the manifest lists shards
//! with these names, the layout finds them, the writer makes them and [`crate::owned`] recognises them as
//! srcache's own, without any of those modules reaching into each other.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{FormatError, Result};

pub const MANIFEST_FILE: &str = "manifest.parquet";
/// The folder of a merged root that holds its `K-of-N` part datasets (FORMAT.md).
pub const PARTS_DIR: &str = "parts";

pub fn shard_file_name(n: u32) -> String {
    format!("shard-{n:05}.srs")
}

/// The shard number of a `shard-NNNNN.srs` file name.
pub(crate) fn shard_number(name: &str) -> Option<u32> {
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

/// Whether `name` is a temporary file a [`crate::DatasetWriter`] made: a shard or manifest being written
/// (`*.srcache-tmp`, or the `*.tmp` names of srcache before 0.2).
pub(crate) fn is_writer_temp(name: &str) -> bool {
    let stem = name.strip_suffix(crate::atomic::TMP_SUFFIX).or_else(|| name.strip_suffix(".tmp"));
    stem.is_some_and(|s| shard_number(s).is_some() || s == MANIFEST_FILE)
}

/// Whether `name` is one of a dataset's own entries: a shard, the manifest, a writer's temporary file or
/// `parts/`.
pub(crate) fn is_dataset_entry(name: &str) -> bool {
    shard_number(name).is_some() || name == MANIFEST_FILE || name == PARTS_DIR || is_writer_temp(name)
}
