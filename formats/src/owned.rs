//! Output folders srcache owns. Every writer (ingest, cache, train, demo) writes only into a folder that is
//! new, empty, or holds nothing but what that writer makes there, locks it for the whole run, and deletes only
//! its own files: `--out ~` is refused instead of mixing a dataset into a home directory, and `--force` never
//! deletes a user's file or a folder another run is writing. An [`Ownership`] says what a writer makes in its
//! folder; [`Ownership::claim`] checks and locks it, [`OwnedDir::remove_own`] and [`Ownership::remove`] delete
//! the writer's files, checked in full (and locked) before the first deletion, so a refusal changes nothing.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::files::{is_dataset_entry, PARTS_DIR};

/// Why a folder was not claimed or not removed. Each names the folder (or entry) it is about.
#[derive(Debug)]
pub enum OwnedError {
    /// The folder holds entries its writer did not make (sorted; the first few are shown).
    Foreign {
        path: PathBuf,
        names: Vec<String>,
        choose: &'static str,
    },
    /// Another process holds the folder's lock.
    Locked {
        path: PathBuf,
        what: &'static str,
    },
    /// An entry a removal would have to delete is not the writer's own; nothing was removed.
    NotRemovable {
        path: PathBuf,
        why: String,
        what: &'static str,
    },
    Io {
        path: PathBuf,
        doing: &'static str,
        source: std::io::Error,
    },
}

impl OwnedError {
    /// The folder or entry the error is about.
    pub fn path(&self) -> &Path {
        match self {
            OwnedError::Foreign { path, .. }
            | OwnedError::Locked { path, .. }
            | OwnedError::NotRemovable { path, .. }
            | OwnedError::Io { path, .. } => path,
        }
    }

    /// The message without the path (for callers whose own error names the path first).
    pub fn reason(&self) -> String {
        match self {
            OwnedError::Foreign { names, choose, .. } => {
                let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
                format!("holds files srcache did not write ({}{more}); choose a new or empty {choose}", shown.join(", "))
            }
            OwnedError::Locked { what, .. } => {
                format!("another srcache process is writing this {what} (its lock is held); wait for it or stop it (nothing was changed)")
            }
            OwnedError::NotRemovable { why, what, .. } => format!("{why}; not removing anything (move it out of the {what} folder)"),
            OwnedError::Io { doing, source, .. } => format!("I/O error while {doing}: {source}"),
        }
    }
}

impl fmt::Display for OwnedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The io::Error is the source: not repeated in the message.
            OwnedError::Io { path, doing, .. } => write!(f, "{}: I/O error while {doing}", path.display()),
            _ => write!(f, "{}: {}", self.path().display(), self.reason()),
        }
    }
}

impl std::error::Error for OwnedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OwnedError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, OwnedError>;

/// The public methods return the crate's error ([`crate::FormatError::Owned`]), which every srcache crate
/// already converts: callers just use `?`.
type Public<T> = crate::Result<T>;

fn io<'a>(path: &'a Path, doing: &'static str) -> impl FnOnce(std::io::Error) -> OwnedError + 'a {
    move |source| OwnedError::Io { path: path.to_path_buf(), doing, source }
}

/// What a folder held when it was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Does not exist yet.
    Missing,
    /// Exists and is empty.
    Empty,
    /// Holds only the writer's own entries (a previous or interrupted run).
    Ours,
}

/// How a writer keeps a second process out of its folder for the whole run. An flock: released when the
/// holder drops it or dies, so a SIGKILLed run never leaves a stale lock behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A lock file of this name in the folder; it is one of the writer's files, and stays while held.
    File(&'static str),
    /// The folder itself (a writer whose file list has no lock file).
    Folder,
    /// Not locked here (a root whose parts are locked one by one).
    None,
}

/// What one kind of writer makes in its folder.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    /// The folder, in messages: "cache", "ingest output", "training run", "demo".
    pub what: &'static str,
    /// What the user should pick instead, in messages: "output directory", "run directory", "--out".
    pub choose: &'static str,
    /// Files the writer makes, by name; their atomic temporaries ([`crate::atomic`]) and the `.tmp` names of
    /// srcache before 0.2 are the writer's too.
    pub files: &'static [&'static str],
    /// Folders the writer makes, by name; a removal deletes them with everything in them.
    pub dirs: &'static [&'static str],
    /// The folder holds a dataset: shards, the manifest, the dataset writer's temporaries and `parts/`.
    pub dataset: bool,
    /// `parts/` holds part folders (names this accepts, e.g. `2-of-4`), each owned like the folder itself:
    /// a removal recurses into them, taking each part's lock.
    pub parts: Option<fn(&str) -> bool>,
    pub lock: Lock,
}

impl Ownership {
    /// Whether `name` is one of the writer's own entries.
    pub fn owns(&self, name: &str) -> bool {
        let listed = |s: &&str| name == *s || crate::atomic::is_own_temp(name, Some(s)) || name == format!("{s}.tmp");
        (self.dataset && is_dataset_entry(name))
            || self.files.iter().any(listed)
            || self.dirs.contains(&name)
            || matches!(self.lock, Lock::File(l) if listed(&l))
    }

    /// What `dir` holds; a folder holding anything not the writer's own is refused, with those entries named.
    pub fn state(&self, dir: &Path) -> Public<DirState> {
        Ok(self.check(dir)?)
    }

    fn check(&self, dir: &Path) -> Result<DirState> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Missing),
            Err(e) => return Err(io(dir, "listing the output directory")(e)),
        };
        let mut any = false;
        let mut foreign = Vec::new();
        for ent in rd {
            let name = ent.map_err(io(dir, "listing the output directory"))?.file_name().to_string_lossy().into_owned();
            any = true;
            if !self.owns(&name) {
                foreign.push(name);
            }
        }
        if !foreign.is_empty() {
            foreign.sort();
            return Err(OwnedError::Foreign { path: dir.to_path_buf(), names: foreign, choose: self.choose });
        }
        Ok(if any { DirState::Ours } else { DirState::Empty })
    }

    /// Claims `dir` for a run: refuses foreign content, creates the folder, and takes its lock (refused while
    /// another process holds it; a folder this call created is removed again then).
    pub fn claim(&self, dir: &Path) -> Public<OwnedDir> {
        let found = self.check(dir)?;
        std::fs::create_dir_all(dir).map_err(io(dir, "creating the output directory"))?;
        let (lock, lock_created) = match self.take_lock(dir, true) {
            Ok(Some((file, created))) => (Some(file), created),
            Ok(None) => (None, false),
            Err(e) => {
                if found == DirState::Missing {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(e.into());
            }
        };
        Ok(OwnedDir { own: *self, path: dir.to_path_buf(), found, _lock: lock, lock_created })
    }

    /// Removes the writer's folder `dir` and everything in it (nothing when it does not exist). Refuses,
    /// deleting nothing, a folder holding anything else or one another process is writing.
    pub fn remove(&self, dir: &Path) -> Public<()> {
        let mut plan = Removal::default();
        plan.add(self, dir, false)?;
        Ok(plan.run()?)
    }

    /// The folder's lock and whether this call made its lock file; with `create` false, None when there is no
    /// lock file (no run ever wrote there).
    fn take_lock(&self, dir: &Path, create: bool) -> Result<Option<(File, bool)>> {
        let (path, file, created) = match self.lock {
            Lock::None => return Ok(None),
            Lock::Folder => (dir.to_path_buf(), File::open(dir).map_err(io(dir, "opening the folder to lock it"))?, false),
            Lock::File(name) => {
                let path = dir.join(name);
                let existed = path.exists();
                let opened = File::options().create(create).truncate(false).write(true).open(&path);
                match opened {
                    Ok(file) => (path, file, !existed),
                    Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io(&path, "opening the lock file")(e)),
                }
            }
        };
        match file.try_lock() {
            Ok(()) => Ok(Some((file, created))),
            Err(std::fs::TryLockError::WouldBlock) => Err(OwnedError::Locked { path: dir.to_path_buf(), what: self.what }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path, "locking")(e)),
        }
    }
}

/// A claimed folder: locked until dropped.
#[derive(Debug)]
pub struct OwnedDir {
    own: Ownership,
    path: PathBuf,
    found: DirState,
    _lock: Option<File>,
    lock_created: bool,
}

impl OwnedDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the folder held when it was claimed.
    pub fn found(&self) -> DirState {
        self.found
    }

    /// Deletes the writer's own entries in the folder (the lock file this run holds stays), checked in full
    /// first: a refusal (a `parts` that is not a folder of parts, a part another run is writing) deletes nothing.
    pub fn remove_own(&self) -> Public<()> {
        let mut plan = Removal::default();
        plan.add(&self.own, &self.path, true)?;
        Ok(plan.run()?)
    }

    /// Leaves the folder as the claim found it: the lock file removed if the claim made it, the folder too if
    /// it did not exist before (and is empty now).
    pub fn release(self) {
        if let (true, Lock::File(name)) = (self.lock_created, self.own.lock) {
            let _ = std::fs::remove_file(self.path.join(name));
        }
        if self.found == DirState::Missing {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// What a removal deletes, listed and checked in full before anything is deleted, with the locks of every
/// folder in it held.
#[derive(Default)]
struct Removal {
    files: Vec<PathBuf>,
    /// Folders the writer makes whole (removed with their contents).
    trees: Vec<PathBuf>,
    /// In deletion order (a folder after everything inside it).
    dirs: Vec<PathBuf>,
    locks: Vec<File>,
}

impl Removal {
    /// Plans the removal of the writer's entries in `dir`; `keep` = the folder itself and its lock file stay
    /// (the caller holds that lock and is about to write there again).
    fn add(&mut self, own: &Ownership, dir: &Path, keep: bool) -> Result<()> {
        if own.check(dir)? == DirState::Missing {
            return Ok(());
        }
        if !keep {
            self.locks.extend(own.take_lock(dir, false)?.map(|(f, _)| f));
        }
        let refuse = |p: &Path, why: String| OwnedError::NotRemovable { path: p.to_path_buf(), why, what: own.what };
        for entry in sorted_entries(dir)? {
            let p = entry.path();
            // Not following links: a link is removed as a link, never what it points to.
            let ft = entry.file_type().map_err(io(&p, "reading an entry's type"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if own.dataset && name == PARTS_DIR {
                let Some(is_part) = own.parts.filter(|_| ft.is_dir()) else {
                    return Err(refuse(&p, format!("is not the folder of {} parts srcache writes", own.what)));
                };
                for part in sorted_entries(&p)? {
                    let pp = part.path();
                    if !(part.file_type().map_err(io(&pp, "reading an entry's type"))?.is_dir() && is_part(&part.file_name().to_string_lossy())) {
                        return Err(refuse(&pp, format!("is not a {} part (a K-of-N folder)", own.what)));
                    }
                    self.add(own, &pp, false)?;
                }
                self.dirs.push(p);
            } else if ft.is_dir() && own.dirs.contains(&name.as_str()) {
                self.trees.push(p);
            } else if ft.is_dir() {
                return Err(refuse(&p, "is a folder srcache did not make".into()));
            } else if !(keep && matches!(own.lock, Lock::File(l) if l == name)) {
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
            std::fs::remove_file(p).map_err(io(p, "removing a file"))?;
        }
        for p in &self.trees {
            std::fs::remove_dir_all(p).map_err(io(p, "removing a folder"))?;
        }
        for d in &self.dirs {
            std::fs::remove_dir(d).map_err(io(d, "removing a folder"))?;
        }
        drop(self.locks);
        Ok(())
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let rd = std::fs::read_dir(dir).map_err(io(dir, "listing a folder"))?;
    let mut entries = rd.collect::<std::io::Result<Vec<_>>>().map_err(io(dir, "listing a folder"))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Ownership = Ownership {
        what: "training run",
        choose: "run directory",
        files: &["config.toml"],
        dirs: &["tb"],
        dataset: false,
        parts: None,
        lock: Lock::Folder,
    };

    const CACHE: Ownership = Ownership {
        what: "cache",
        choose: "output directory",
        files: &["cache.toml"],
        dirs: &[],
        dataset: true,
        parts: Some(|n| n.split_once("-of-").is_some()),
        lock: Lock::File("cache.lock"),
    };

    #[test]
    fn foreign_files_are_named_and_nothing_is_claimed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("notes.txt"), "mine").expect("write");
        std::fs::write(dir.join("config.toml"), "").expect("write");
        let e = RUN.claim(&dir).expect_err("foreign file");
        assert!(matches!(&e, crate::FormatError::Owned(o) if o.path() == dir), "{e}");
        assert!(e.to_string().contains("holds files srcache did not write (notes.txt); choose a new or empty run directory"), "{e}");
        assert!(RUN.remove(&dir).is_err() && dir.join("notes.txt").exists());
    }

    #[test]
    fn a_claim_locks_and_removal_keeps_the_held_lock_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("cache");
        let held = CACHE.claim(&dir).expect("claim");
        assert_eq!(held.found(), DirState::Missing);
        let e = CACHE.claim(&dir).expect_err("second claim");
        assert!(e.to_string().contains("another srcache process is writing this cache"), "{e}");
        std::fs::write(dir.join("shard-00000.srs"), "x").expect("write");
        std::fs::create_dir_all(dir.join("parts/0-of-2")).expect("mkdir");
        std::fs::write(dir.join("parts/0-of-2/cache.toml"), "").expect("write");
        held.remove_own().expect("remove own");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("ls").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["cache.lock"]);
        drop(held);
        CACHE.remove(&dir).expect("remove");
        assert!(!dir.exists());
    }

    #[test]
    fn a_removal_refuses_a_foreign_folder_before_deleting_anything() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("cache");
        std::fs::create_dir_all(dir.join("parts/mine")).expect("mkdir");
        std::fs::write(dir.join("shard-00000.srs"), "x").expect("write");
        let e = CACHE.remove(&dir).expect_err("not a part");
        assert!(e.to_string().contains("is not a cache part (a K-of-N folder); not removing anything"), "{e}");
        assert!(dir.join("shard-00000.srs").exists());
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("tb")).expect("mkdir");
        std::fs::write(run.join("tb/events"), "x").expect("write");
        let claimed = RUN.claim(&run).expect("claim");
        assert_eq!(claimed.found(), DirState::Ours);
        claimed.remove_own().expect("remove own");
        assert!(!run.join("tb").exists());
    }
}
