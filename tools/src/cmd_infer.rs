//! `srcache infer`: experts (+ a trained fusion model) on full images of any size, tiled with overlap
//! blending; writes one PNG per image and method.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use srcache_experts::evaluate::run_image;
use srcache_experts::Fuser;

use crate::stack::StackArgs;

/// Super-resolve LR images: every expert, and the fusion model when --run is given. Output files are
/// OUT/<stem>_<method>.png (method = expert name or "fused").
#[derive(clap::Args, Debug)]
pub struct Args {
    /// LR images or folders of them.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Only write the fused image (needs --run).
    #[arg(long)]
    pub fused_only: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (stack, fusion) = a.stack.build()?;
    for n in &stack.notes {
        eprintln!("note: {n}");
    }
    if a.fused_only && fusion.is_none() {
        anyhow::bail!("--fused-only needs --run RUN_DIR (a trained fusion model)");
    }
    let mut files = Vec::new();
    for p in &a.inputs {
        if p.is_dir() {
            files.extend(srcache_ingest::scan::list_images(p)?);
        } else {
            files.push(p.clone());
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} images {per_sec} eta {eta} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let fuser = fusion.as_ref().map(|f| f as &dyn Fuser);
    let mut failed = 0;
    for f in &files {
        bar.set_message(f.display().to_string());
        let result = (|| -> Result<()> {
            let (lr, _) = srcache_ingest::scan::decode_rgb8(f)?;
            let out = run_image(&stack, fuser, &lr)?;
            for n in &out.notes {
                bar.suspend(|| eprintln!("note: {}: {n}", f.display()));
            }
            let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let write = |method: &str, img: &image::RgbImage| -> Result<()> {
                Ok(srcache_ingest::write_png(&a.out.join(format!("{stem}_{method}.png")), img)?)
            };
            if !a.fused_only {
                for (n, img) in &out.experts {
                    write(n, img)?;
                }
            }
            if let Some(img) = &out.fused {
                write("fused", img)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // `suspend`, not `println`: a hidden bar (stderr not a terminal) drops its printlns.
            bar.suspend(|| eprintln!("skipped {}: {e:#}", f.display()));
            failed += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("{} images super-resolved into {}, {failed} skipped", files.len() - failed, a.out.display());
    if failed > 0 {
        anyhow::bail!("{failed} of {} images failed", files.len());
    }
    Ok(())
}
