//! The output directory of a cache run: what may be in it, who may write it, and whether what is there is
//! the same run (resume), a finished one (no-op), or something else (refused, with the difference named).
//! A run writes only files it owns and never deletes anything it did not create; `--force` removes the
//! run's own files and starts over.

use std::path::Path;

use srcache_formats::{Dataset, DirState, Lock, OwnedDir, Ownership};

use crate::config::{CacheConfig, CONFIG_FILE, DONE_FILE, INPUTS_FILE, LOCK_FILE, PCA_FILE};
use crate::error::{CacheError, Result};
use crate::CacheSummary;

/// Files a cache run writes into its dataset directory besides the shards and the manifest.
pub const SIDECARS: [&str; 5] = [CONFIG_FILE, DONE_FILE, LOCK_FILE, INPUTS_FILE, PCA_FILE];

/// What a cache run owns in its dataset directory: the dataset, its sidecars, the lock, and `parts/` of
/// K-of-N part caches (each owned the same way).
pub const CACHE: Ownership = Ownership {
    what: "cache",
    choose: "output directory",
    files: &SIDECARS,
    dirs: &[],
    dataset: true,
    parts: Some(|name| srcache_ingest::Part::from_dir_name(name).is_some()),
    lock: Lock::File(LOCK_FILE),
};

/// The root of a partitioned cache: `parts/` and, after `srcache merge`, its manifest and PCA record. Not
/// locked: each part is locked by the run writing it.
pub const CACHE_ROOT: Ownership = Ownership { files: &[PCA_FILE], lock: Lock::None, ..CACHE };

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// Removes a cache directory's own files (shards, manifest, sidecars, srcache temporary files, `parts/` of
/// part caches) and the directory. Refuses, deleting nothing, a directory holding anything else (a `parts`
/// that is not a folder of K-of-N parts included) or one another srcache process is writing.
pub fn remove_cache(dir: &Path) -> Result<()> {
    Ok(CACHE.remove(dir)?)
}

/// A directory that holds only a run's records and no sample (a run that failed before its first shard, e.g.
/// on a bad expert file) is not a cache yet: its records are dropped so the corrected command starts afresh
/// instead of being refused as "a different config".
pub fn forget_unstarted(dir: &Path) -> Result<()> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        match SIDECARS.iter().find(|s| name == **s) {
            Some(&LOCK_FILE) => {}
            Some(s) => records.push(dir.join(s)),
            None => return Ok(()),
        }
    }
    for p in records {
        std::fs::remove_file(&p).map_err(io(&p))?;
    }
    Ok(())
}

/// Checks the saved `cache.toml` (if any) against `cfg`; writes it if absent.
pub fn check_or_save_config(cfg: &CacheConfig, dir: &Path) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    if path.exists() {
        let saved = CacheConfig::from_toml_file(&path)?;
        if let Some(diff) = config_diff(&saved, cfg)? {
            return Err(CacheError::Refused {
                out: dir.to_path_buf(),
                what: format!(
                    "holds a cache made with a different config ({diff}); use another output directory, or --force to \
                     delete this cache and start over"
                ),
            });
        }
        return Ok(());
    }
    Ok(srcache_formats::write_atomic(&path, cfg.to_toml()?.as_bytes())?)
}

/// The content-defining lines that differ between two configs, or None when they make the same cache.
pub fn config_diff(a: &CacheConfig, b: &CacheConfig) -> Result<Option<String>> {
    if a.content() == b.content() {
        return Ok(None);
    }
    let (ta, tb) = (a.content().to_toml()?, b.content().to_toml()?);
    let only = |x: &str, y: &str| -> Vec<String> { x.lines().filter(|l| !y.lines().any(|o| o == *l)).take(4).map(str::to_string).collect() };
    let (was, now) = (only(&ta, &tb), only(&tb, &ta));
    Ok(Some(format!("recorded: [{}]; now: [{}]", was.join("; "), now.join("; "))))
}

/// The input files this cache was made from must be the ones there now: `inputs.json` records them (relative
/// path, size, a hash of each file's ends) when the cache starts; a resume or a rerun over a changed input is
/// refused with the files added, removed or changed named. For a part, the whole input's list is recorded (it
/// decides where the parts are cut).
pub fn check_or_save_inputs(dir: &Path, now: &srcache_ingest::InputList) -> Result<()> {
    let path = dir.join(INPUTS_FILE);
    if path.exists() {
        let text = srcache_formats::read_regular(&path).map_err(io(&path))?;
        let recorded: srcache_ingest::InputList =
            serde_json::from_slice(&text).map_err(|e| CacheError::ConfigFile { path: path.clone(), what: format!("not an input list: {e}") })?;
        if let Some(diff) = recorded.diff(now) {
            return Err(CacheError::Refused {
                out: dir.to_path_buf(),
                what: format!(
                    "the input files changed since this cache was started ({diff}); resuming would mix two inputs: use a new \
                     output directory, or --force to delete this cache and start over"
                ),
            });
        }
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(now).map_err(|e| CacheError::Pipeline { what: format!("input list: {e}") })?;
    Ok(srcache_formats::write_atomic(&path, &json)?)
}

/// A finished cache (`cache.done.json`) is believed only when its dataset opens and matches the summary; a
/// marker over missing or changed shards is an error, not "already complete".
pub fn read_done(dir: &Path) -> Result<Option<CacheSummary>> {
    let path = dir.join(DONE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = srcache_formats::read_regular_to_string(&path).map_err(io(&path))?;
    let summary: CacheSummary =
        serde_json::from_str(&text).map_err(|e| CacheError::ConfigFile { path: path.clone(), what: format!("not a cache summary: {e}") })?;
    let refuse = |why: String| CacheError::Refused {
        out: dir.to_path_buf(),
        what: format!("{DONE_FILE} says this cache is complete, but {why}; --force rebuilds it"),
    };
    let ds = Dataset::open(dir).map_err(|e| refuse(format!("the dataset does not open ({})", srcache_formats::error_chain(&e))))?;
    if ds.len() as u64 != summary.samples || ds.shards().len() as u64 != summary.shards {
        return Err(refuse(format!(
            "it holds {} samples in {} shards, the summary recorded {} in {} (`srcache verify` checks it)",
            ds.len(),
            ds.shards().len(),
            summary.samples,
            summary.shards
        )));
    }
    Ok(Some(summary))
}

/// Prepares `dir` for writing and returns its lock: refuses foreign content, creates the directory, takes the
/// lock (refused while another process holds it), and only then, with `force`, removes the previous cache
/// (keeping the lock file it now holds). A `--force` therefore never touches a cache another run is writing.
pub fn claim(dir: &Path, force: bool) -> Result<OwnedDir> {
    let owned = CACHE.claim(dir)?;
    if force && owned.found() == DirState::Ours {
        owned.remove_own()?;
    }
    Ok(owned)
}
