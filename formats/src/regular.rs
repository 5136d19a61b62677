//! Opening only regular files. A FIFO, socket or device put where a shard, manifest, image, config or expert
//! file belongs must be refused at once: a plain `open` of a FIFO blocks until a writer appears (forever, for
//! a reader that nobody feeds), and reading a character device never ends. The file is opened with
//! `O_NONBLOCK` (so opening a FIFO returns at once), then `fstat`ed: the check is on the file actually opened,
//! not on a name that could be swapped between a `stat` and the `open`.

use std::fs::File;
use std::io::{Error, ErrorKind, Read, Result};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a non-regular file is, for the error message.
fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (symlinks are followed); anything else is an
/// `InvalidInput` error saying what it is, returned without blocking.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("{} where a regular file was expected; not read", kind(&ft))));
    }
    // O_NONBLOCK means nothing for a regular file's reads; it is cleared anyway so the descriptor is ordinary.
    // SAFETY: fcntl on a descriptor this function owns, with integer arguments only.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// [`std::fs::read`] for regular files only (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut f = open_regular(path)?;
    let mut out = Vec::with_capacity(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// [`std::fs::read_to_string`] for regular files only (see [`open_regular`]).
pub fn read_regular_to_string(path: &Path) -> Result<String> {
    String::from_utf8(read_regular(path)?).map_err(|e| Error::new(ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("shard-00000.srs");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        let e = open_regular(&fifo).expect_err("a FIFO must be refused");
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(open_regular(dir.path()).expect_err("a directory").to_string().contains("directory"));
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "hi").expect("write");
        assert_eq!(read_regular_to_string(&f).expect("read"), "hi");
    }
}
