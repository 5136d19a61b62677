//! Where a dataset's shards and manifest are (plain or merged, FORMAT.md), found from the directory and the
//! manifest's metadata; what [`crate::Dataset::open`] and [`crate::verify_dataset`] both start from.

use std::fs;
use std::path::{Path, PathBuf};

use crate::files::{list_shards, shard_number};
use crate::manifest::{Manifest, PARTS_KEY};
use crate::{FormatError, Result};

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
fn is_safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty() && path.components().all(|c| matches!(c, std::path::Component::Normal(_)))
}
