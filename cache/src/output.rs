//! The output directory of a cache run: what may be in it, who may write it, and whether what is there is
//! the same run (resume), a finished one (no-op), or something else (refused, with the difference named).
//! A run writes only files it owns and never deletes anything it did not create; `--force` removes the
//! run's own files and starts over.

use std::fs::File;
use std::path::{Path, PathBuf};

use srcache_formats::{check_output_dir, Dataset, DirState};

use crate::config::{CacheConfig, CONFIG_FILE, DONE_FILE, INPUTS_FILE, LOCK_FILE, PARTS_DIR, PCA_FILE};
use crate::error::{CacheError, Result};
use crate::CacheSummary;

/// Files a cache run writes into its dataset directory besides the shards and the manifest.
pub const SIDECARS: [&str; 5] = [CONFIG_FILE, DONE_FILE, LOCK_FILE, INPUTS_FILE, PCA_FILE];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// An exclusive lock on a dataset directory, held for the whole run (released when dropped, or when the
/// process dies: a SIGKILLed run never leaves a stale lock behind).
pub struct DirLock {
    _file: File,
}

fn held_elsewhere(dir: &Path) -> CacheError {
    CacheError::Refused {
        out: dir.to_path_buf(),
        what: "another srcache process is writing this cache (its lock is held); wait for it or stop it (nothing was changed)".into(),
    }
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        DirLock::lock(dir, path, file)
    }

    /// The lock of a directory that has a lock file; None when it has none (no run ever wrote there).
    fn acquire_existing(dir: &Path) -> Result<Option<DirLock>> {
        let path = dir.join(LOCK_FILE);
        match File::options().write(true).open(&path) {
            Ok(file) => DirLock::lock(dir, path, file).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    fn lock(dir: &Path, path: PathBuf, file: File) -> Result<DirLock> {
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(held_elsewhere(dir)),
            Err(std::fs::TryLockError::Error(source)) => Err(CacheError::Io { path, source }),
        }
    }
}

/// What removing a cache deletes, listed and checked in full before anything is deleted, with the locks of
/// every dataset directory in it held: a refusal (a user's `parts`, a running part) leaves everything as it was.
#[derive(Default)]
struct Removal {
    files: Vec<PathBuf>,
    /// In deletion order (a folder after everything inside it).
    dirs: Vec<PathBuf>,
    locks: Vec<DirLock>,
}

impl Removal {
    /// Plans the removal of the cache in `dir`; `keep` = the directory itself and its lock file stay (the
    /// caller holds that lock and is about to write there again).
    fn plan(&mut self, dir: &Path, keep: bool) -> Result<()> {
        if check_output_dir(dir, &SIDECARS)? == DirState::Missing {
            return Ok(());
        }
        if !keep {
            self.locks.extend(DirLock::acquire_existing(dir)?);
        }
        let refuse = |p: &Path, what: &str| CacheError::Refused {
            out: p.to_path_buf(),
            what: format!("{what}; not removing anything (move it out of the cache folder)"),
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.collect::<std::io::Result<_>>().map_err(io(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let p = entry.path();
            // Not following links: a link is removed as a link, never what it points to.
            let ft = entry.file_type().map_err(io(&p))?;
            let name = entry.file_name();
            if name == PARTS_DIR {
                if !ft.is_dir() {
                    return Err(refuse(&p, "is not the folder of cache parts srcache writes"));
                }
                let mut parts: Vec<_> = std::fs::read_dir(&p).map_err(io(&p))?.collect::<std::io::Result<_>>().map_err(io(&p))?;
                parts.sort_by_key(|e| e.file_name());
                for part in parts {
                    let pp = part.path();
                    let is_part = part.file_type().map_err(io(&pp))?.is_dir()
                        && part.file_name().to_str().and_then(srcache_ingest::Part::from_dir_name).is_some();
                    if !is_part {
                        return Err(refuse(&pp, "is not a cache part (a K-of-N folder)"));
                    }
                    self.plan(&pp, false)?;
                }
                self.dirs.push(p);
            } else if ft.is_dir() {
                return Err(refuse(&p, "is a folder srcache did not make"));
            } else if !(keep && name == LOCK_FILE) {
                self.files.push(p);
            }
        }
        if !keep {
            self.dirs.push(dir.to_path_buf());
        }
        Ok(())
    }

    fn run(self) -> Result<()> {
        for p in &self.files {
            std::fs::remove_file(p).map_err(io(p))?;
        }
        for d in &self.dirs {
            std::fs::remove_dir(d).map_err(io(d))?;
        }
        drop(self.locks);
        Ok(())
    }
}

/// Removes a cache directory's own files (shards, manifest, sidecars, srcache temporary files, `parts/` of
/// part caches) and the directory. Refuses, deleting nothing, a directory holding anything else (a `parts`
/// that is not a folder of K-of-N parts included) or one another srcache process is writing.
pub fn remove_cache(dir: &Path) -> Result<()> {
    let mut plan = Removal::default();
    plan.plan(dir, false)?;
    plan.run()
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
pub fn claim(dir: &Path, force: bool) -> Result<DirLock> {
    let state = check_output_dir(dir, &SIDECARS)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock = DirLock::acquire(dir)?;
    if force && state == DirState::Dataset {
        let mut plan = Removal::default();
        plan.plan(dir, true)?;
        plan.run()?;
    }
    Ok(lock)
}
