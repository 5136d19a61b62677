//! `srcache merge OUT`: joins the parts `srcache cache --part K/N` wrote under `OUT/parts/K-of-N/` into one
//! dataset, without copying a shard: a top-level manifest whose rows point into the parts (FORMAT.md, "Merged
//! roots"). Every part must exist, be finished, and have been made from the same input config, experts and
//! schema; otherwise the merge refuses, naming the part, and changes nothing. Merging again gives the same
//! manifest (idempotent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use srcache_formats::{Dataset, Manifest, ManifestRow, Schema, PARTS_KEY, SKIPPED_KEY};
use srcache_ingest::{Part, Skipped};

use crate::config::{CacheConfig, CONFIG_FILE, PARTS_DIR};
use crate::error::{CacheError, Result};
use crate::output::{config_diff, read_done};

/// What a merge joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeSummary {
    pub root: PathBuf,
    pub parts: Vec<String>,
    pub samples: u64,
    pub shards: u64,
    pub bytes: u64,
    pub skipped: usize,
}

fn refuse(root: &Path, part: Option<&str>, what: String) -> CacheError {
    let out = match part {
        Some(p) => root.join(PARTS_DIR).join(p),
        None => root.to_path_buf(),
    };
    CacheError::Refused { out, what }
}

/// The part folders under `root/parts`, with the N they were cut for; all must agree on N and be 0..N.
pub fn list_parts(root: &Path) -> Result<Vec<(Part, PathBuf)>> {
    let dir = root.join(PARTS_DIR);
    let rd = std::fs::read_dir(&dir).map_err(|e| {
        refuse(root, None, format!("no {PARTS_DIR}/ folder to merge ({e}); run `srcache cache --part K/N --out {}` first", root.display()))
    })?;
    let mut parts = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match Part::from_dir_name(&name) {
            Some(p) if e.path().is_dir() => parts.push((p, e.path())),
            _ => return Err(refuse(root, None, format!("{PARTS_DIR}/{name} is not a part folder (K-of-N)"))),
        }
    }
    parts.sort_by_key(|(p, _)| p.index);
    let Some(n) = parts.first().map(|(p, _)| p.count) else {
        return Err(refuse(root, None, format!("{PARTS_DIR}/ is empty")));
    };
    if let Some((p, _)) = parts.iter().find(|(p, _)| p.count != n) {
        return Err(refuse(
            root,
            Some(&p.dir_name()),
            format!("was cut into {} parts, {} into {n}: parts of different splits cannot merge", p.count, parts[0].0.dir_name()),
        ));
    }
    for k in 0..n {
        if !parts.iter().any(|(p, _)| p.index == k) {
            let name = Part { index: k, count: n }.dir_name();
            return Err(refuse(root, Some(&name), format!("missing: run `srcache cache --part {k}/{n}` for it")));
        }
    }
    Ok(parts)
}

/// Checks every part and writes `root/manifest.parquet` over all of them.
pub fn merge(root: &Path) -> Result<MergeSummary> {
    let parts = list_parts(root)?;
    let mut first: Option<(String, CacheConfig, Schema)> = None;
    let mut rows: Vec<ManifestRow> = Vec::new();
    let mut skipped: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut names = Vec::new();
    let mut ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let (mut shards, mut bytes) = (0u64, 0u64);
    for (part, dir) in &parts {
        let name = part.dir_name();
        let rel = format!("{PARTS_DIR}/{name}");
        let cfg = CacheConfig::from_toml_file(&dir.join(CONFIG_FILE))
            .map_err(|e| refuse(root, Some(&name), format!("no readable {CONFIG_FILE}: {}", chain(&e))))?;
        if cfg.input.part != Some(*part) {
            return Err(refuse(
                root,
                Some(&name),
                format!("its {CONFIG_FILE} records part {:?}, not {part}: it belongs to another dataset", cfg.input.part.map(|p| p.to_string())),
            ));
        }
        let summary = read_done(dir).map_err(|e| refuse(root, Some(&name), chain(&e)))?.ok_or_else(|| {
            refuse(
                root,
                Some(&name),
                format!("unfinished (no cache.done.json): rerun `srcache cache --part {part}` with the same config to resume it"),
            )
        })?;
        let ds = Dataset::open(dir).map_err(|e| refuse(root, Some(&name), chain(&e)))?;
        let schema = ds.schema().cloned().unwrap_or_default();
        match &first {
            None => first = Some((name.clone(), cfg.clone(), schema)),
            Some((fname, fcfg, fschema)) => {
                let mut a = fcfg.clone();
                let mut b = cfg.clone();
                a.input.part = None;
                b.input.part = None;
                if let Some(diff) = config_diff(&a, &b)? {
                    return Err(refuse(root, Some(&name), format!("made with a different config than {fname} ({diff})")));
                }
                if *fschema != schema && !ds.is_empty() {
                    return Err(refuse(root, Some(&name), format!("its shards have a different schema (experts, shapes or codecs) than {fname}")));
                }
            }
        }
        let meta = Manifest::read_metadata(&Manifest::path_in(dir)).map_err(|e| refuse(root, Some(&name), chain(&e)))?;
        if let Some(list) = meta.get(SKIPPED_KEY).and_then(|v| serde_json::from_str::<Vec<Skipped>>(v).ok()) {
            for s in list {
                skipped.entry(s.path).or_insert(s.reason);
            }
        }
        for r in ds.manifest() {
            // One id is one sample: a part copied over another (or cut from another input) repeats ids, and
            // a dataset holding them twice would count each twice and serve either by id.
            if let Some(first) = ids.insert(r.sample_id.clone(), name.clone()) {
                return Err(refuse(
                    root,
                    Some(&name),
                    format!(
                        "holds sample {:?}, which {first} holds too: parts must hold disjoint samples (was one part copied over another?); nothing was merged",
                        r.sample_id
                    ),
                ));
            }
            let mut r = r.clone();
            r.shard = format!("{rel}/{}", r.shard);
            rows.push(r);
        }
        shards += summary.shards;
        bytes += summary.bytes;
        names.push(rel);
    }
    let mut kv = BTreeMap::new();
    kv.insert(PARTS_KEY.to_string(), serde_json::to_string(&names).map_err(|e| CacheError::Pipeline { what: e.to_string() })?);
    let skipped_list: Vec<Skipped> = skipped.into_iter().map(|(path, reason)| Skipped { path, reason }).collect();
    kv.insert(SKIPPED_KEY.to_string(), serde_json::to_string(&skipped_list).map_err(|e| CacheError::Pipeline { what: e.to_string() })?);
    Manifest::write_with_metadata(&Manifest::path_in(root), &rows, &kv)?;
    // The result must open as one dataset (every part's shards checked against the new manifest).
    Dataset::open(root)?;
    Ok(MergeSummary { root: root.to_path_buf(), parts: names, samples: rows.len() as u64, shards, bytes, skipped: skipped_list.len() })
}

fn chain(e: &dyn std::error::Error) -> String {
    srcache_formats::error_chain(e)
}
