//! `srcache`: the command line over srcache's stages.

use clap::{Parser, Subcommand};

mod doctor;

/// srcache: cache frozen super-resolution experts once, then train fusion networks on the cache at full speed.
#[derive(Parser)]
#[command(name = "srcache", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions and hardware: srcache, torch, CUDA devices, cuDNN, CPU threads.
    Doctor,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor => doctor::run(),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
