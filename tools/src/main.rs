//! `srcache`: the command line over srcache's stages. Each command lives in its own module with its clap
//! `Args` and a `run`; this file only dispatches and maps errors to exit codes.

use clap::{Parser, Subcommand};

mod cmd_cache;
mod cmd_demo;
mod cmd_diff;
mod cmd_dump;
mod cmd_eval;
mod cmd_export;
mod cmd_infer;
mod cmd_ingest;
mod cmd_inspect;
mod cmd_merge;
mod cmd_stats;
mod cmd_train;
mod cmd_verify;
mod doctor;
mod stack;

/// srcache: run frozen super-resolution experts once over a dataset, cache their outputs and features in
/// compressed, checksummed shards, and train fusion networks on that cache at full speed.
///
/// Typical flow: `srcache ingest lr` (make LR like MATLAB) → `srcache cache` (run experts, write shards) →
/// `srcache train` (fusion training) → `srcache eval` / `srcache infer`. `srcache demo` runs all of it on
/// built-in photos and experts. `srcache verify`, `inspect`, `stats`, `dump`, `export` look inside a cache.
#[derive(Parser)]
#[command(name = "srcache", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions and hardware: srcache, torch and its CUDA build, CUDA devices, cuDNN, CPU threads.
    Doctor(doctor::Args),
    /// The end-to-end demo on built-in photos and experts: ingest → cache → train → eval, with a report.
    Demo(cmd_demo::Args),
    /// Prepare data: write MATLAB-bicubic LR folders, or LR/HR patch shards (no experts).
    Ingest(cmd_ingest::Args),
    /// Run the experts once over every patch and write their outputs and features to shards.
    Cache(cmd_cache::CacheArgs),
    /// Join the parts of a partitioned cache (cache --part K/N) into one dataset, without copying shards.
    Merge(cmd_merge::Args),
    /// Train a fusion network on a cache directory.
    Train(cmd_train::TrainArgs),
    /// PSNR/SSIM tables on benchmark folders (Set5/Set14/B100/Urban100/Manga109 layout) for bicubic, each
    /// expert and a trained fusion model.
    Eval(cmd_eval::Args),
    /// Super-resolve full images of any size with the experts (+ fusion), tiled with overlap blending.
    Infer(cmd_infer::Args),
    /// Show a shard's or dataset's schema, sample count, per-tensor bytes and compression ratio.
    Inspect(cmd_inspect::Args),
    /// Check every checksum and that the manifest agrees with the shards; non-zero exit on any problem.
    Verify(cmd_verify::Args),
    /// Whether two datasets hold the same samples (ids, tensor bytes, manifest rows); non-zero exit if not.
    Diff(cmd_diff::Args),
    /// Per-expert PSNR distribution and best-expert counts, tensor value ranges, optional histogram PNG.
    Stats(cmd_stats::Args),
    /// Draw one sample (LR, HR, each expert's SR, error heatmaps, feature maps) as a contact-sheet PNG.
    Dump(cmd_dump::Args),
    /// Export a sample or shard to .npz / .safetensors, or the manifest to CSV.
    Export(cmd_export::Args),
    /// Measure speed against the baselines named in BENCHMARKS.md.
    #[command(subcommand)]
    Bench(srcache_bench::Bench),
}

/// Keeps freed buffers in the malloc heap instead of handing them back to the kernel. The pipelines allocate and
/// free multi-MB images, patches and batches on several threads; glibc's defaults mmap/munmap each one, and every
/// munmap is a cross-core TLB shootdown plus fresh page faults on the next allocation (~10% of ingest CPU in
/// profiles). Process-wide, so it also applies to libtorch's allocations (and to both sides of every benchmark).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        // 32 MiB is glibc's ceiling for the mmap threshold on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() {
    tune_malloc();
    // A shard truncated by another process while mapped: a message naming it instead of a silent SIGBUS.
    srcache_formats::sigbus::install();
    // `srcache inspect DIR | head` must end quietly when the reader goes away, as Unix tools do, instead of
    // panicking on the failed write (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(a) => doctor::run(a),
        Command::Demo(a) => cmd_demo::run(a),
        Command::Ingest(a) => cmd_ingest::run(a),
        Command::Cache(a) => cmd_cache::run(a),
        Command::Merge(a) => cmd_merge::run(a),
        Command::Train(a) => cmd_train::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Infer(a) => cmd_infer::run(a),
        Command::Inspect(a) => cmd_inspect::run(a),
        Command::Verify(a) => cmd_verify::run(a),
        Command::Diff(a) => cmd_diff::run(a),
        Command::Stats(a) => cmd_stats::run(a),
        Command::Dump(a) => cmd_dump::run(a),
        Command::Export(a) => cmd_export::run(a),
        Command::Bench(b) => srcache_bench::run(b),
    };
    if let Err(err) = result {
        // The whole chain on one line: every library error names its file/sample, its causes follow.
        eprintln!("error: {}", chain(&err));
        std::process::exit(1);
    }
}

/// "context: cause: cause", skipping a cause whose text its parent already shows.
fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for e in err.chain() {
        let t = e.to_string();
        if out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}
