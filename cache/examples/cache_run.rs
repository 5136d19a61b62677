//! `cache_run CONFIG.toml`: runs (or resumes) a cache run from a config file. The kill/resume test spawns
//! this as a child process so that it can SIGKILL it mid-run; the CLI (`srcache cache`) does the same work.

use srcache_cache::{run, CacheConfig, NoProgress};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: cache_run CONFIG.toml");
        std::process::exit(2);
    };
    let result = CacheConfig::from_toml_file(std::path::Path::new(&path)).and_then(|cfg| run(&cfg, &NoProgress));
    match result {
        Ok(s) => println!("samples {} resumed {} written {} no_op {}", s.samples, s.resumed, s.written, s.no_op),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
