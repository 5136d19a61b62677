//! The experts (+ trained fusion model) options shared by `eval` and `infer`; the work is in
//! `srcache_experts` (one full-image path for eval, infer, the demo and training validation).

use std::path::PathBuf;

use anyhow::{Context, Result};
use srcache_experts::{parse_device, ExpertSpec, FusionModule, SrStack, Tiling};
use srcache_formats::Dataset;

/// Which experts (and fusion model) to run, where, and in what tiles.
#[derive(clap::Args, Debug)]
pub struct StackArgs {
    /// Upscaling factor (default: the cache's, else 4).
    #[arg(long)]
    pub scale: Option<u32>,
    /// Expert as NAME=builtin:KIND (bicubic, lanczos3, sharp_bicubic) or NAME=FILE.pt; repeatable.
    /// Default: the experts of --cache, else the three built-ins.
    #[arg(long = "expert")]
    pub experts: Vec<String>,
    /// A cache directory (or merged root) whose schema lists the experts, their sources and the patch size
    /// they ran at.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// A training run directory (from `srcache train`) whose fusion.pt fuses the experts.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tile side in LR pixels for the experts (0 = whole image). An expert traced at a fixed size (HAT,
    /// SwinIR) runs in tiles of the size the cache ran it at instead, with a note.
    #[arg(long, default_value_t = 192)]
    pub tile: i64,
    /// Tile overlap in LR pixels (blended linearly).
    #[arg(long, default_value_t = 16)]
    pub overlap: i64,
}

impl StackArgs {
    /// Loads the experts (sorted by name: the fusion model's order) and the fusion model, if any.
    pub fn build(&self) -> Result<(SrStack, Option<FusionModule>)> {
        self.build_with_cache().map(|(stack, fusion, _)| (stack, fusion))
    }

    /// [`StackArgs::build`], also handing back the `--cache` dataset it opened (eval fits its baselines on it).
    pub fn build_with_cache(&self) -> Result<(SrStack, Option<FusionModule>, Option<Dataset>)> {
        let device = parse_device(&self.device)?;
        let mut given = self.experts.iter().map(|s| s.parse::<ExpertSpec>().map(|e| (e.name, e.source))).collect::<Result<Vec<_>, _>>()?;
        // Flags in any order: the fusion model takes its experts sorted by name.
        given.sort_by(|a, b| a.0.cmp(&b.0));
        let ds = match &self.cache {
            Some(dir) => Some(Dataset::open(dir).with_context(|| format!("reading the experts of cache {}", dir.display()))?),
            None => None,
        };
        let tiling = Tiling { tile: self.tile, overlap: self.overlap };
        let stack = SrStack::assemble(given, ds.as_ref(), self.scale, device, tiling)?;
        let fusion = match &self.run {
            Some(run) => Some(FusionModule::load(run, device)?),
            None => None,
        };
        if let Some(f) = &fusion {
            srcache_experts::evaluate::check_compatible(&stack, f)?;
        }
        Ok((stack, fusion, ds))
    }
}
