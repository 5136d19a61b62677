//! `srcache verify`: prove a dataset is intact before spending GPU/CPU hours training on it.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use srcache_formats::{Manifest, ManifestRow, Shard, MANIFEST_FILE};

use crate::cmd_inspect::shard_paths;

/// Check every payload checksum, that every payload decodes to its schema shape, and that the manifest
/// agrees with the shards (each row points at an existing sample with the same id, patch, PSNRs and sizes;
/// each shard sample has a row). Prints each problem with its shard and sample, then a summary line.
/// Exits non-zero if anything is wrong.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A dataset directory (shards + manifest.parquet), or a single shard file (checksums only).
    pub path: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let paths = shard_paths(&args.path)?;
    let mut problems: Vec<String> = Vec::new();
    let mut shards = Vec::new();
    let mut samples = 0usize;
    let mut first_schema = None;
    for p in &paths {
        match Shard::open(p) {
            Err(e) => problems.push(format!("{}: cannot open: {e}", p.display())),
            Ok(s) => {
                problems.extend(s.verify().into_iter().map(|pr| pr.to_string()));
                for (i, m) in s.metas().iter().enumerate() {
                    // The shard header stores the schema once; a size mismatch means a bad index entry.
                    for (t, spec) in s.schema().tensors.iter().enumerate() {
                        if let Ok(v) = s.tensor_at(i, t) {
                            if Some(v.raw_len()) != spec.raw_len() {
                                problems.push(format!(
                                    "{}: sample {i} ({}), tensor {:?}: decoded size {} != shape {:?}",
                                    p.display(), m.id, spec.name, v.raw_len(), spec.shape
                                ));
                            }
                        }
                    }
                }
                match &first_schema {
                    None => first_schema = Some(s.schema().clone()),
                    Some(f) if f != s.schema() => {
                        problems.push(format!("{}: schema differs from {}", p.display(), paths[0].display()))
                    }
                    _ => {}
                }
                samples += s.len();
                shards.push(s);
            }
        }
    }
    if args.path.is_dir() {
        check_manifest(&args.path, &shards, &mut problems);
    }
    for p in &problems {
        println!("PROBLEM {p}");
    }
    println!(
        "verify {}: {} shard(s), {} samples, {} problem(s)",
        args.path.display(),
        paths.len(),
        samples,
        problems.len()
    );
    if !problems.is_empty() {
        bail!("{} problem(s) found", problems.len());
    }
    Ok(())
}

fn check_manifest(dir: &std::path::Path, shards: &[Shard], problems: &mut Vec<String>) {
    let path = dir.join(MANIFEST_FILE);
    let rows = match Manifest::read(&path) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("{}: unreadable or corrupt: {e}", path.display()));
            return;
        }
    };
    let by_name: HashMap<String, &Shard> = shards
        .iter()
        .filter_map(|s| s.path().file_name().map(|n| (n.to_string_lossy().into_owned(), s)))
        .collect();
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        let at = format!("{}: row {r} (sample {:?}, {} #{})", path.display(), row.sample_id, row.shard, row.index);
        if let Some(prev) = seen.insert((row.shard.clone(), row.index), r) {
            problems.push(format!("{at}: same shard sample as row {prev}"));
        }
        let Some(shard) = by_name.get(&row.shard) else {
            problems.push(format!("{at}: shard file does not exist"));
            continue;
        };
        let i = row.index as usize;
        let Ok(meta) = shard.meta(i) else {
            problems.push(format!("{at}: shard has only {} samples", shard.len()));
            continue;
        };
        let expect = expected_row(shard, i, &row.shard);
        for diff in row_diffs(row, &expect) {
            problems.push(format!("{at}: {diff} (shard sample id {:?})", meta.id));
        }
    }
    for s in shards {
        let name = s.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (i, m) in s.metas().iter().enumerate() {
            if !seen.contains_key(&(name.clone(), i as u64)) {
                problems.push(format!("{}: sample {i} ({:?}) has no manifest row", s.path().display(), m.id));
            }
        }
    }
}

fn expected_row(shard: &Shard, i: usize, name: &str) -> Option<ManifestRow> {
    ManifestRow::from_shard(shard, i, name).ok()
}

fn row_diffs(row: &ManifestRow, expect: &Option<ManifestRow>) -> Vec<String> {
    let Some(e) = expect else { return vec!["cannot read the shard's sample".into()] };
    let mut d = Vec::new();
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{what} is {a} in the manifest but {b} in the shard"));
        }
    };
    cmp("sample_id", format!("{:?}", row.sample_id), format!("{:?}", e.sample_id));
    cmp("source", format!("{:?}", row.source), format!("{:?}", e.source));
    cmp("variant", format!("{:?}", row.variant), format!("{:?}", e.variant));
    cmp("patch", format!("{:?}", (row.x, row.y, row.w, row.h)), format!("{:?}", (e.x, e.y, e.w, e.h)));
    cmp("psnr", format!("{:?}", row.psnr), format!("{:?}", e.psnr));
    cmp("bytes", row.bytes.to_string(), e.bytes.to_string());
    cmp("raw_bytes", row.raw_bytes.to_string(), e.raw_bytes.to_string());
    d
}
