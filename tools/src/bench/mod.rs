//! `srcache bench …`: every benchmark of srcache, each printing its figure next to the named baseline in one
//! run (BENCHMARKS.md records them). Speed is measured here, never asserted in tests.

use clap::Subcommand;

mod cache;
mod formats;
mod ingest;
mod loader;
mod loader_lib;

#[derive(Subcommand)]
pub enum Bench {
    /// MATLAB-exact bicubic ×4 of a 2K image: MPix/s on 1 core and all cores.
    Resize(ingest::BenchResizeArgs),
    /// End-to-end ingest (decode + LR + patches + write) vs decode alone.
    Ingest(ingest::BenchIngestArgs),
    /// Cache pipeline throughput vs the experts' forward pass alone.
    Cache(cache::BenchCacheArgs),
    /// Shard loader vs one fp32 archive per sample; training step fed by the loader vs in-memory batches.
    Loader(loader::BenchLoaderArgs),
    /// Per-codec encode/decode GB/s and ratio on real-photo content; shard vs one fp32 archive per sample.
    Formats(formats::BenchFormatsArgs),
}

pub fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Resize(a) => ingest::run_resize(a),
        Bench::Ingest(a) => ingest::run_ingest(a),
        Bench::Cache(a) => cache::run(a),
        Bench::Loader(a) => loader::run(a),
        Bench::Formats(a) => formats::run(a),
    }
}
