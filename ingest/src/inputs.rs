//! Fingerprints of a run's input files, so a resumed run can prove it reads the same inputs as the run that
//! wrote the first half of its output.
//!
//! Resuming works by skipping the samples already on disk (see `formats::DatasetWriter`), which is only right
//! when the sample stream is the same. A different folder, an added, removed or edited image, or another
//! setting would silently produce a dataset whose first shards come from one input and the rest from another.
//! Producers therefore store an [`InputList`] next to their output and compare it on resume:
//!
//! ```no_run
//! # fn main() -> srcache_ingest::Result<()> {
//! use srcache_ingest::{scan, InputList, ScanConfig};
//! let cfg = ScanConfig { hr_dir: "data/DF2K/HR".into(), ..Default::default() };
//! let report = scan(&cfg)?;
//! let now = InputList::of(&report.images, &cfg);
//! let stored: InputList = serde_json::from_str(&std::fs::read_to_string("out/inputs.json").unwrap_or_default()).unwrap_or_default();
//! if let Some(diff) = stored.diff(&now) {
//!     eprintln!("refusing to resume: {diff}"); // e.g. "inputs differ: 1 file(s) added (0901.png)"
//! }
//! # Ok(()) }
//! ```
//!
//! A file's fingerprint is its path relative to its root (the HR or the LR folder), its size, and the xxh3-64
//! of its first and last 64 KiB. That reads at most 128 KiB a file (a DF2K scan fingerprints its 3450 images
//! in well under a second once cached), survives copies and moves of the whole folder (mtimes and absolute
//! paths are not part of it), and catches the edits that matter in practice: a replaced, re-encoded,
//! truncated or regenerated image changes its size or its head or tail bytes. It is not a cryptographic hash:
//! an edit of a few interior bytes that keeps the size is not detected.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::Result;
use crate::scan::{ImageEntry, ScanConfig};

/// Bytes hashed at each end of a file.
pub const EDGE_BYTES: u64 = 64 << 10;

/// One input file's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Relative to its root, `/`-separated (a name that is not UTF-8 is kept with U+FFFD replacements).
    pub path: String,
    pub bytes: u64,
    /// xxh3-64 of the first and last [`EDGE_BYTES`] (the whole file when smaller), as 16 hex digits.
    pub edges: String,
}

/// The `edges` of a file that could not be read.
pub const UNREADABLE: &str = "unreadable";

impl InputFile {
    /// Fingerprints `path`, naming it `rel`. A file that cannot be read gets `edges` = [`UNREADABLE`] (the run
    /// skips it as a bad input; if it becomes readable, the fingerprint changes), never an error here.
    pub fn read(path: &Path, rel: String) -> InputFile {
        match Self::edges(path) {
            Ok((bytes, edges)) => InputFile { path: rel, bytes, edges },
            Err(_) => InputFile { path: rel, bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0), edges: UNREADABLE.into() },
        }
    }

    /// What differs between this fingerprint and `bytes` (the whole file as read now), if anything.
    pub fn differs_from(&self, bytes: &[u8]) -> Option<String> {
        if self.edges == UNREADABLE {
            // Unreadable when fingerprinted: reading it now either fails (a skip) or means it changed.
            return Some("it could not be read when the run started".into());
        }
        if bytes.len() as u64 != self.bytes {
            return Some(format!("{} bytes now, {} when the run started", bytes.len(), self.bytes));
        }
        (edges_of(bytes) != self.edges).then(|| "same size, different bytes than when the run started".into())
    }

    fn edges(path: &Path) -> std::io::Result<(u64, String)> {
        // Regular files only: opening a FIFO put in an image's place would block.
        let mut f = srcache_formats::open_regular(path)?;
        let bytes = f.metadata()?.len();
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; EDGE_BYTES.min(bytes) as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        if bytes > EDGE_BYTES {
            let tail = EDGE_BYTES.min(bytes - EDGE_BYTES);
            f.seek(SeekFrom::Start(bytes - tail))?;
            buf.resize(tail as usize, 0);
            f.read_exact(&mut buf)?;
            h.update(&buf);
        }
        Ok((bytes, format!("{:016x}", h.digest())))
    }
}

/// [`InputFile::edges`] of a file's bytes already in memory (the same hash of the same ends).
fn edges_of(bytes: &[u8]) -> String {
    let n = bytes.len() as u64;
    let mut h = Xxh3::new();
    h.update(&bytes[..EDGE_BYTES.min(n) as usize]);
    if n > EDGE_BYTES {
        let tail = EDGE_BYTES.min(n - EDGE_BYTES);
        h.update(&bytes[(n - tail) as usize..]);
    }
    format!("{:016x}", h.digest())
}

/// A run's input fingerprints by file path (HR and LR), for the decode workers to check the bytes they read.
#[derive(Debug, Clone, Default)]
pub struct Fingerprints(std::collections::HashMap<std::path::PathBuf, InputFile>);

impl Fingerprints {
    /// The entries of `list` (made by [`InputList::of`] from `entries` and `cfg`) keyed by each file's path.
    pub fn of(entries: &[ImageEntry], cfg: &ScanConfig, list: &InputList) -> Fingerprints {
        let hr: BTreeMap<&str, &InputFile> = list.hr.iter().map(|f| (f.path.as_str(), f)).collect();
        let lr: BTreeMap<&str, &InputFile> = list.lr.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut map = std::collections::HashMap::new();
        for e in entries {
            if let Some(f) = hr.get(relative(&e.hr, &cfg.hr_dir).as_str()) {
                map.insert(e.hr.clone(), (*f).clone());
            }
            if let (Some(p), Some(root)) = (&e.lr, &cfg.lr_dir) {
                if let Some(f) = lr.get(relative(p, root).as_str()) {
                    map.insert(p.clone(), (*f).clone());
                }
            }
        }
        Fingerprints(map)
    }

    pub fn get(&self, path: &Path) -> Option<&InputFile> {
        self.0.get(path)
    }
}

/// The fingerprints of every image a run reads: HR files and, when an LR folder is given, their LR
/// partners, each list sorted by relative path. Serialises as `{"hr": [...], "lr": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputList {
    pub hr: Vec<InputFile>,
    #[serde(default)]
    pub lr: Vec<InputFile>,
}

/// `path` relative to `root`, `/`-separated; the whole path if it is not under `root`.
fn relative(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

impl InputList {
    /// Fingerprints the images of a scan (`scan(cfg)?.images`): every HR file relative to `cfg.hr_dir`, every
    /// paired LR file relative to `cfg.lr_dir`. Files are read in parallel on the rayon pool; one that cannot
    /// be read is recorded as such (see [`InputFile::read`]), so this never fails.
    ///
    /// Pass the entries the run will actually read: files a scan skipped (unpaired, duplicate stems) do not
    /// change the output, and any change that brings one in changes the entries, hence the list.
    pub fn of(entries: &[ImageEntry], cfg: &ScanConfig) -> InputList {
        let hr: Vec<InputFile> = entries.par_iter().map(|e| InputFile::read(&e.hr, relative(&e.hr, &cfg.hr_dir))).collect();
        let lr: Vec<InputFile> = match &cfg.lr_dir {
            None => Vec::new(),
            Some(root) => entries.par_iter().filter_map(|e| e.lr.as_ref()).map(|p| InputFile::read(p, relative(p, root))).collect(),
        };
        let mut list = InputList { hr, lr };
        list.hr.sort_by(|a, b| a.path.cmp(&b.path));
        list.lr.sort_by(|a, b| a.path.cmp(&b.path));
        list
    }

    /// Scans `cfg` and fingerprints what it found ([`crate::scan`] then [`InputList::of`]).
    pub fn scan(cfg: &ScanConfig) -> Result<InputList> {
        Ok(InputList::of(&crate::scan(cfg)?.images, cfg))
    }

    /// Number of files (HR and LR).
    pub fn len(&self) -> usize {
        self.hr.len() + self.lr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One xxh3-64 over the whole list (16 hex digits): a short identity to print or to store where the full
    /// list is too long. Equal lists give equal digests; use [`InputList::diff`] to say what changed.
    pub fn digest(&self) -> String {
        let mut h = Xxh3::new();
        for (role, files) in [("hr", &self.hr), ("lr", &self.lr)] {
            for f in files {
                for part in [role, f.path.as_str(), &f.bytes.to_string(), f.edges.as_str()] {
                    h.update(part.as_bytes());
                    h.update(&[0]);
                }
            }
        }
        format!("{:016x}", h.digest())
    }

    /// What changed from `self` (the recorded inputs) to `now`; None when they are the same files.
    pub fn diff(&self, now: &InputList) -> Option<InputDiff> {
        let mut d = InputDiff::default();
        for (role, old, new) in [("", &self.hr, &now.hr), ("LR ", &self.lr, &now.lr)] {
            let old: BTreeMap<&str, &InputFile> = old.iter().map(|f| (f.path.as_str(), f)).collect();
            let new: BTreeMap<&str, &InputFile> = new.iter().map(|f| (f.path.as_str(), f)).collect();
            for (p, f) in &new {
                match old.get(p) {
                    None => d.added.push(format!("{role}{p}")),
                    Some(o) if o.bytes != f.bytes => d.changed.push(format!("{role}{p} ({} -> {} bytes)", o.bytes, f.bytes)),
                    Some(o) if o.edges != f.edges => d.changed.push(format!("{role}{p} (same size, different bytes)")),
                    Some(_) => {}
                }
            }
            d.removed.extend(old.keys().filter(|p| !new.contains_key(*p)).map(|p| format!("{role}{p}")));
        }
        (!d.is_empty()).then_some(d)
    }
}

/// The difference between two [`InputList`]s: relative paths (LR files prefixed `LR `) added, removed and
/// changed. Display: `inputs differ: 2 file(s) added (a.png, b.png), 1 changed (c.png (100 -> 120 bytes))`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl InputDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for InputDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        let mut parts = Vec::new();
        for (what, list) in [("added", &self.added), ("removed", &self.removed), ("changed", &self.changed)] {
            if list.is_empty() {
                continue;
            }
            let mut names = list.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if list.len() > SHOWN {
                names.push_str(&format!(", and {} more", list.len() - SHOWN));
            }
            parts.push(format!("{} file(s) {what} ({names})", list.len()));
        }
        write!(f, "inputs differ: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<ImageEntry> {
        let cfg = ScanConfig { hr_dir: dir.to_path_buf(), ..Default::default() };
        crate::scan(&cfg).expect("scan").images
    }

    fn list(dir: &Path) -> InputList {
        let cfg = ScanConfig { hr_dir: dir.to_path_buf(), ..Default::default() };
        InputList::of(&entries(dir), &cfg)
    }

    #[test]
    fn copies_match_and_edits_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = tmp.path().join("a");
        std::fs::create_dir_all(a.join("sub")).expect("mkdir");
        // One file above 2 x 64 KiB so head and tail are separate reads.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(a.join("big.png"), &big).expect("write");
        std::fs::write(a.join("sub/small.png"), b"tiny").expect("write");
        std::fs::write(a.join("gone.png"), b"bye").expect("write");
        let before = list(&a);
        assert_eq!(before.hr.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["big.png", "gone.png", "sub/small.png"]);

        // A copy elsewhere is the same input.
        let b = tmp.path().join("b");
        std::fs::create_dir_all(b.join("sub")).expect("mkdir");
        for f in ["big.png", "gone.png", "sub/small.png"] {
            std::fs::copy(a.join(f), b.join(f)).expect("copy");
        }
        assert_eq!(before.diff(&list(&b)), None);
        assert_eq!(before.digest(), list(&b).digest());

        // Edit the tail (same size), grow a file, remove one, add one.
        let mut edited = big.clone();
        let n = edited.len();
        edited[n - 10] ^= 0xff;
        std::fs::write(b.join("big.png"), &edited).expect("write");
        std::fs::write(b.join("sub/small.png"), b"tiny!").expect("write");
        std::fs::remove_file(b.join("gone.png")).expect("rm");
        std::fs::write(b.join("new.png"), b"hello").expect("write");
        let d = before.diff(&list(&b)).expect("differs");
        assert_eq!(d.added, ["new.png"]);
        assert_eq!(d.removed, ["gone.png"]);
        assert_eq!(d.changed, ["big.png (same size, different bytes)", "sub/small.png (4 -> 5 bytes)"]);
        let text = d.to_string();
        assert!(text.contains("1 file(s) added (new.png)") && text.contains("1 file(s) removed (gone.png)"), "{text}");
        assert_ne!(before.digest(), list(&b).digest());

        // Round trip through JSON.
        let json = serde_json::to_string(&before).expect("json");
        assert_eq!(serde_json::from_str::<InputList>(&json).expect("parse"), before);
    }
}
