//! Dataset checks: every payload checksum and decode, one schema across shards that honours the SR layout,
//! and the manifest compared row by row with what the shards say of each sample. `Dataset::open` runs the
//! metadata part (no payload hashing); [`verify_dataset`] runs all of it and keeps going after a fault, so one
//! run lists every problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::layout::DatasetLayout;
use crate::manifest::{Manifest, ManifestRow};
use crate::{Problem, Result, Schema, Shard};

/// What [`verify_dataset`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub samples: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(path: &Path, sample: Option<usize>, tensor: Option<String>, fault: String) -> Problem {
    // A Problem prints its path first; an error chain that names the same path again ("cannot open: <path>:
    // truncated ...") would show it twice.
    let fault = fault.replacen(&format!("{}: ", path.display()), "", 1);
    Problem { shard: path.to_path_buf(), sample, tensor, fault }
}

/// Checks a dataset directory (plain or merged) or a single shard file. `on_shard(done, total)` reports progress.
pub fn verify_dataset(path: &Path, on_shard: &mut dyn FnMut(usize, usize)) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    if path.is_file() {
        report.shards = 1;
        match Shard::open(path) {
            Err(e) => report.problems.push(problem(path, None, None, format!("cannot open: {}", crate::error_chain(&e)))),
            Ok(s) => {
                report.samples = s.len();
                report.problems.extend(s.verify());
            }
        }
        on_shard(1, 1);
        return Ok(report);
    }
    let layout = DatasetLayout::discover(path)?;
    for p in &layout.problems {
        report.problems.push(p.clone());
    }
    let total = layout.shards.len();
    report.shards = total;
    let mut opened: Vec<(String, Shard)> = Vec::new();
    let mut first_schema: Option<(PathBuf, Schema)> = None;
    for (k, (rel, p)) in layout.shards.iter().enumerate() {
        match Shard::open(p) {
            Err(e) => report.problems.push(problem(p, None, None, format!("cannot open: {}", crate::error_chain(&e)))),
            Ok(s) => {
                report.problems.extend(s.verify());
                match &first_schema {
                    None => {
                        if let Err(why) = s.schema().check_sr_layout() {
                            report.problems.push(problem(p, None, None, format!("schema: {why}")));
                        }
                        first_schema = Some((p.clone(), s.schema().clone()));
                    }
                    Some((fp, f)) if f != s.schema() => {
                        report.problems.push(problem(p, None, None, format!("schema differs from {}", fp.display())));
                    }
                    _ => {}
                }
                report.samples += s.len();
                opened.push((rel.clone(), s));
            }
        }
        on_shard(k + 1, total);
    }
    match Manifest::read(&layout.manifest) {
        Err(e) => report.problems.push(problem(&layout.manifest, None, None, format!("unreadable or corrupt: {}", crate::error_chain(&e)))),
        Ok(rows) => {
            let refs: Vec<(&str, &Shard)> = opened.iter().map(|(n, s)| (n.as_str(), s)).collect();
            report.problems.extend(cross_check(&layout.manifest, &rows, &refs, &layout.shard_names()));
        }
    }
    Ok(report)
}

/// Compares manifest rows with the shards' own metadata: row k must describe the k-th sample of the dataset
/// (shards in order), field for field. `shards` are the shards that could be opened, by manifest name;
/// `all_names` every shard the dataset should have (opened or not), in order.
pub(crate) fn cross_check(manifest: &Path, rows: &[ManifestRow], shards: &[(&str, &Shard)], all_names: &[String]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let by_name: HashMap<&str, &Shard> = shards.iter().copied().collect();
    // The expected order: every sample of every shard, shards in dataset order.
    let mut expected: Vec<(&str, usize)> = Vec::new();
    for name in all_names {
        if let Some(s) = by_name.get(name.as_str()) {
            expected.extend((0..s.len()).map(|i| (name.as_str(), i)));
        }
    }
    let mut seen: HashMap<(&str, u64), usize> = HashMap::new();
    // A sample id names one sample: two rows with one id (a part copied over another) would be read as one
    // sample by id and counted twice by position.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (r, row) in rows.iter().enumerate() {
        let at =
            |what: String| problem(manifest, Some(r), None, format!("row {r} (sample {:?}, {} #{}): {what}", row.sample_id, row.shard, row.index));
        if let Some(prev) = ids.insert(row.sample_id.as_str(), r) {
            problems.push(at(format!("duplicate sample id: row {prev} has the same id")));
        }
        if let Some(prev) = seen.insert((row.shard.as_str(), row.index), r) {
            problems.push(at(format!("same shard sample as row {prev}")));
            continue;
        }
        let Some(shard) = by_name.get(row.shard.as_str()) else {
            let why = if all_names.contains(&row.shard) { "its shard cannot be opened" } else { "shard file does not exist" };
            problems.push(at(why.into()));
            continue;
        };
        let i = row.index as usize;
        if i >= shard.len() {
            problems.push(at(format!("shard has only {} samples", shard.len())));
            continue;
        }
        if expected.get(r) != Some(&(row.shard.as_str(), i)) {
            problems.push(at("out of order: the manifest must list samples in shard order".into()));
        }
        match ManifestRow::from_shard(shard, i, &row.shard) {
            Err(e) => problems.push(at(format!("cannot read the shard's sample: {}", crate::error_chain(&e)))),
            Ok(want) => {
                for diff in row_diffs(row, &want) {
                    problems.push(at(diff));
                }
            }
        }
    }
    for (name, s) in shards {
        for (i, m) in s.metas().iter().enumerate() {
            if !seen.contains_key(&(*name, i as u64)) {
                problems.push(problem(s.path(), Some(i), None, format!("sample {:?} has no manifest row", m.id)));
            }
        }
    }
    problems
}

fn row_diffs(row: &ManifestRow, e: &ManifestRow) -> Vec<String> {
    row.differences(e).into_iter().map(|(what, a, b)| format!("{what} is {a} in the manifest but {b} in the shard")).collect()
}
