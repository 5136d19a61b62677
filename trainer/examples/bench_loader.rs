//! Same as `srcache bench loader` with defaults (usable before the CLI is wired): cargo run --release
//! -p srcache-trainer --example bench_loader [samples batches].
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mut cfg = srcache_trainer::bench::LoaderBenchConfig::default();
    if let Some(&s) = args.first() {
        cfg.samples = s;
    }
    if let Some(&b) = args.get(1) {
        cfg.batches = b;
    }
    if std::env::var("ZSTD").is_ok() {
        cfg.codec = srcache_formats::Codec::ShuffleZstd { level: 1 };
    }
    match srcache_trainer::bench::run(&cfg, &mut |m| eprintln!("{m}")) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    let _ = std::fs::remove_dir_all(&cfg.dir);
}
