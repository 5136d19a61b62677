//! `srcache export`: get cached tensors out to tools that do not read shards (numpy, safetensors users,
//! spreadsheets). Values are exported exactly as the shard decodes them; nothing is renormalised.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use srcache_formats::export::{write_manifest_csv, write_npz, write_safetensors};
use srcache_formats::Manifest;

use crate::cmd_inspect::{find_sample, open_checked, shard_paths};

/// Export one sample or a whole shard to .npz / .safetensors, or the manifest to CSV.
///
/// Examples:
///   srcache export cache/ --sample 0001_x2_000017 --format npz --out s.npz
///   srcache export cache/ --shard 3 --format safetensors --out shard3.safetensors
///   srcache export cache/ --manifest-csv manifest.csv
///
/// In .npz each tensor is one array named like the tensor (`lr`, `hr`, `sr/<expert>`, `feat/<expert>`).
/// numpy has no bfloat16, so bf16 tensors are widened to float32 in .npz (exactly; safetensors keeps bf16).
/// A whole-shard export stacks samples along a new first axis and adds `sample_id` (an array of strings in
/// .npz, a JSON list in the safetensors metadata).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset directory (holding shard-*.srs and manifest.parquet).
    pub dir: PathBuf,
    /// Export the sample with this id (see `srcache export DIR --manifest-csv` for the ids).
    #[arg(long, conflicts_with = "shard")]
    pub sample: Option<String>,
    /// Export every sample of shard number N (the N-th shard in dataset order, from 0), stacked along a new
    /// first axis.
    #[arg(long)]
    pub shard: Option<u32>,
    /// File format for --sample / --shard.
    #[arg(long, value_enum, default_value_t = Format::Npz)]
    pub format: Format,
    /// Output file for --sample / --shard.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the manifest (one row per sample: id, shard, index, source, patch box, per-expert PSNR,
    /// stored and raw bytes) to this CSV file.
    #[arg(long)]
    pub manifest_csv: Option<PathBuf>,
    /// Deflate-compress the .npz members (smaller, slower; numpy reads both).
    #[arg(long)]
    pub compress: bool,
    /// Export PCA-compressed features (a cache made with --feat-pca) rebuilt to all their channels (f32)
    /// instead of as the stored coefficients.
    #[arg(long)]
    pub reconstruct_feat: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// numpy's zip of .npy arrays (`numpy.load(path)`).
    Npz,
    /// Hugging Face safetensors (`safetensors.numpy.load_file(path)` / `safetensors.torch.load_file`).
    Safetensors,
}

pub fn run(args: Args) -> Result<()> {
    let mut did = false;
    if let Some(csv) = &args.manifest_csv {
        let path = Manifest::path_in(&args.dir);
        let rows = Manifest::read(&path)?;
        write_manifest_csv(&rows, csv)?;
        println!("wrote {} ({} rows)", csv.display(), rows.len());
        did = true;
    }
    if args.sample.is_some() || args.shard.is_some() {
        let Some(out) = &args.out else { bail!("--out FILE is required with --sample / --shard") };
        let (shard, indices) = if let Some(id) = &args.sample {
            let (shard, i) = find_sample(&args.dir, id)?;
            (shard, vec![i])
        } else {
            let n = args.shard.unwrap_or_default();
            let path = shard_file(&args.dir, n)?;
            let shard = open_checked(&path)?;
            let all = (0..shard.len()).collect();
            (shard, all)
        };
        let stacked = args.shard.is_some();
        match args.format {
            Format::Npz => write_npz(&shard, &indices, stacked, out, args.compress, args.reconstruct_feat)?,
            Format::Safetensors => write_safetensors(&shard, &indices, stacked, out, args.reconstruct_feat)?,
        }
        println!("wrote {} ({} sample(s), {} tensors each)", out.display(), indices.len(), shard.schema().tensors.len());
        did = true;
    }
    if !did {
        bail!("nothing to export: give --sample ID, --shard N, or --manifest-csv FILE (see --help)");
    }
    Ok(())
}

/// Shard number `n` of the dataset, in dataset order (for a merged root, counting across parts).
fn shard_file(dir: &Path, n: u32) -> Result<PathBuf> {
    let all = shard_paths(dir)?;
    all.get(n as usize).cloned().with_context(|| format!("{}: no shard number {n} (found {} shards)", dir.display(), all.len()))
}
