//! `srcache inspect`: what is in a shard or a dataset directory, and how well it compresses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use srcache_formats::{DatasetLayout, Shard, TensorSpec};

/// Show the schema, sample count, per-tensor dtype/shape/codec, stored vs raw bytes (compression ratio)
/// and shard sizes of a shard file or a dataset directory.
///
/// For lossy `affine_u8` tensors the original values are not stored, so the error cannot be measured;
/// instead the worst-case quantisation error is reported: scale/2 of the worst channel, read from the
/// per-channel scales stored in each payload.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A shard file (`*.srs`) or a dataset directory holding `shard-*.srs`.
    pub path: PathBuf,
    /// Print one JSON document instead of tables (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
struct TensorReport {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    codec: String,
    lossy: bool,
    stored_bytes: u64,
    raw_bytes: u64,
    ratio: f64,
    /// affine_u8 only: theoretical worst-case |decoded - original| over all samples and channels.
    max_quant_error: Option<f32>,
}

#[derive(Serialize)]
struct ShardReport {
    path: PathBuf,
    samples: usize,
    file_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    path: PathBuf,
    samples: usize,
    attrs: std::collections::BTreeMap<String, String>,
    tensors: Vec<TensorReport>,
    shards: Vec<ShardReport>,
    file_bytes: u64,
    /// Input files the producer skipped, from the manifest's metadata (`{path, reason}` objects).
    skipped: Vec<serde_json::Value>,
}

/// The shard files of a dataset (plain or merged root), in dataset order; a single file path is itself.
pub(crate) fn shard_paths(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let layout = DatasetLayout::discover(path)?;
    if let Some(p) = layout.problems.first() {
        bail!("{p} (run `srcache verify {}`)", path.display());
    }
    if layout.shards.is_empty() {
        bail!("{}: no shard-*.srs files here (is this a dataset directory?)", path.display());
    }
    Ok(layout.shards.into_iter().map(|(_, p)| p).collect())
}

/// Opens a shard whose schema must be a consistent SR layout (or a generic, non-SR one): what every command
/// that reads tensors by their SR meaning needs, so a crafted shape never reaches their indexing.
pub(crate) fn open_checked(p: &Path) -> Result<Shard> {
    let shard = Shard::open(p).with_context(|| format!("opening {}", p.display()))?;
    if let Err(why) = shard.schema().check_sr_layout() {
        bail!("{}: inconsistent schema: {why} (run `srcache verify`)", p.display());
    }
    Ok(shard)
}

/// The sample with id `id`: through the dataset when it opens, else by scanning shard indexes (so a damaged
/// manifest does not hide samples from `dump` and `export`). Its schema must be a consistent SR layout.
pub(crate) fn find_sample(dir: &Path, id: &str) -> Result<(Shard, usize)> {
    for p in shard_paths(dir)? {
        let shard = open_checked(&p)?;
        if let Some(i) = shard.metas().iter().position(|m| m.id == id) {
            return Ok((shard, i));
        }
    }
    bail!("{}: no sample with id {id:?} (list ids with `srcache export DIR --manifest-csv ids.csv`)", dir.display())
}

pub fn run(args: Args) -> Result<()> {
    let paths = shard_paths(&args.path)?;
    let mut tensors: Vec<TensorReport> = Vec::new();
    let mut shards = Vec::new();
    let mut first_schema = None;
    let mut samples = 0;
    let mut attrs = Default::default();
    for p in &paths {
        let shard = open_checked(p)?;
        match &first_schema {
            None => {
                first_schema = Some(shard.schema().clone());
                attrs = shard.schema().attrs.clone();
                tensors = shard.schema().tensors.iter().map(new_report).collect();
            }
            Some(s) if s != shard.schema() => bail!("{}: schema differs from {}", p.display(), paths[0].display()),
            Some(_) => {}
        }
        for i in 0..shard.len() {
            for (t, rep) in tensors.iter_mut().enumerate() {
                let v = shard.tensor_at(i, t)?;
                rep.stored_bytes += v.stored().len() as u64;
                rep.raw_bytes += v.raw_len() as u64;
                if let Some(e) = v.affine_error_bound() {
                    rep.max_quant_error = Some(rep.max_quant_error.unwrap_or(0.0).max(e));
                }
            }
        }
        samples += shard.len();
        shards.push(ShardReport { path: p.clone(), samples: shard.len(), file_bytes: shard.file_len() });
    }
    for t in &mut tensors {
        t.ratio = if t.stored_bytes > 0 { t.raw_bytes as f64 / t.stored_bytes as f64 } else { 0.0 };
    }
    let file_bytes = shards.iter().map(|s| s.file_bytes).sum();
    let manifest = srcache_formats::Manifest::path_in(&args.path);
    let skipped = match srcache_formats::Manifest::read_metadata(&manifest) {
        Ok(kv) => kv.get(srcache_formats::SKIPPED_KEY).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default(),
        // A single shard file, or a dataset without a readable manifest (`verify` reports that one).
        Err(_) => Vec::new(),
    };
    let report = Report { path: args.path.clone(), samples, attrs, tensors, shards, file_bytes, skipped };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn new_report(s: &TensorSpec) -> TensorReport {
    TensorReport {
        name: s.name.clone(),
        dtype: s.dtype.to_string(),
        shape: s.shape.clone(),
        codec: s.codec.to_string(),
        lossy: s.codec.is_lossy(),
        ..Default::default()
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn print_text(r: &Report) {
    println!("{}: {} samples in {} shard(s), {}", r.path.display(), r.samples, r.shards.len(), human_bytes(r.file_bytes));
    for (k, v) in &r.attrs {
        // A PCA basis is thousands of numbers: summarise it (the JSON output and `srcache export` keep it whole).
        let summary = srcache_formats::attr::pca_expert(k).and_then(|_| serde_json::from_str::<srcache_formats::PcaBasis>(v).ok());
        match summary {
            Some(b) => println!(
                "  attr {k} = PCA basis: {} of {} channels, {:.2}% of the variance ({} bytes; `inspect --json` prints it)",
                b.k,
                b.channels,
                100.0 * b.explained_variance(),
                v.len()
            ),
            None => println!("  attr {k} = {v}"),
        }
    }
    println!();
    println!("{:<24} {:<5} {:<16} {:<16} {:>11} {:>11} {:>7}  note", "tensor", "dtype", "shape", "codec", "stored", "raw", "ratio");
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        let note = match t.max_quant_error {
            Some(e) => format!("lossy: max error <= {e:.3e} (theoretical scale/2; originals not stored)"),
            None if t.lossy => "lossy".to_string(),
            None => String::new(),
        };
        println!(
            "{:<24} {:<5} {:<16} {:<16} {:>11} {:>11} {:>6.2}x  {note}",
            t.name,
            t.dtype,
            shape,
            t.codec,
            human_bytes(t.stored_bytes),
            human_bytes(t.raw_bytes),
            t.ratio
        );
    }
    println!();
    for s in &r.shards {
        println!("{:<40} {:>7} samples {:>11}", s.path.display(), s.samples, human_bytes(s.file_bytes));
    }
    if !r.skipped.is_empty() {
        println!();
        println!("{} input file(s) skipped when the dataset was made:", r.skipped.len());
        for k in &r.skipped {
            let field = |name: &str| k.get(name).and_then(|v| v.as_str()).unwrap_or("?").to_string();
            let (path, reason) = (field("path"), field("reason"));
            // Reasons usually name the file already.
            if reason.contains(&path) {
                println!("  {reason}")
            } else {
                println!("  {path}: {reason}")
            }
        }
    }
}
