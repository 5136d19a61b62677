//! The one way srcache writes a file: into a temporary file of its own next to the target, flushed and
//! fsynced, renamed over the target, and the directory fsynced. A reader therefore sees the old file or the
//! whole new one, never a half-written file under the real name, even across a crash or power loss.
//!
//! Temporary names end in [`TMP_SUFFIX`], which nothing but srcache uses, so cleaning up after a crash
//! (see [`is_own_temp`]) can never delete a user's file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{FormatError, Result};

/// Suffix of every temporary file srcache creates.
pub const TMP_SUFFIX: &str = ".srcache-tmp";

/// `<path>.srcache-tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Whether `name` is a temporary file srcache made for `final_name` (or, with `final_name` None, any).
pub fn is_own_temp(name: &str, final_name: Option<&str>) -> bool {
    match (name.strip_suffix(TMP_SUFFIX), final_name) {
        (Some(stem), Some(f)) => stem == f,
        (Some(_), None) => true,
        _ => false,
    }
}

/// fsync the directory holding `path`, so a rename into it survives a crash.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| FormatError::io(dir, "opening directory to fsync", e))?;
        d.sync_all().map_err(|e| FormatError::io(dir, "fsyncing directory", e))?;
    }
    Ok(())
}

/// A file being written atomically. Dropped without [`AtomicFile::commit`], it removes its temporary file.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| FormatError::io(&tmp, "creating temporary file", e))?;
        Ok(AtomicFile { path: path.to_path_buf(), tmp, out: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flush, fsync, rename over the target, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().ok_or_else(|| FormatError::InvalidInput { what: "atomic file committed twice".into() })?;
        let file = out.into_inner().map_err(|e| FormatError::io(&self.tmp, "flushing", e.into_error()))?;
        file.sync_all().map_err(|e| FormatError::io(&self.tmp, "fsyncing", e))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(|e| FormatError::io(&self.path, "renaming into place", e))?;
        sync_dir(&self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.out {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("atomic file already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl io::Seek for AtomicFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        match &mut self.out {
            Some(w) => w.seek(pos),
            None => Err(io::Error::other("atomic file already committed")),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| FormatError::io(f.tmp_path(), "writing", e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        {
            let mut f = AtomicFile::create(&p).expect("create");
            f.write_all(b"half").expect("write");
            assert!(tmp_path(&p).exists());
        }
        assert!(!tmp_path(&p).exists(), "dropped temp file left behind");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert!(is_own_temp("shard-00001.srs.srcache-tmp", Some("shard-00001.srs")));
        assert!(!is_own_temp("notes.tmp", None));
    }
}
