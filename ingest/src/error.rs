use std::path::{Path, PathBuf};

/// Any error kept as the cause of an ingest error (the image crate's, an I/O error, a `formats` error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in ingest; every variant names the file it is about.
///
/// Variants that wrap a cause keep it as `source()` and do not repeat its text in their own message, so a
/// chain printer (`srcache_formats::error_chain`, the CLI) shows "file: what: cause" once.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: cannot read directory")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no images found (looked for png, jpg, jpeg, webp, bmp, tif, tiff)")]
    NoImages { path: PathBuf },
    #[error("{path}: cannot read")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file (a fifo, socket or device); not read")]
    NotAFile { path: PathBuf },
    #[error("{path}: cannot decode image")]
    Decode {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("{path}: {width}x{height} image is over the decode limit ({max_side} pixels a side, {max_gib} GiB decoded); refused before decoding")]
    TooLarge { path: PathBuf, width: u32, height: u32, max_side: u32, max_gib: u64 },
    #[error("{path}: {width}x{height} is smaller than the scale {scale}: its LR would have no pixels")]
    SmallerThanScale { path: PathBuf, width: u32, height: u32, scale: u32 },
    #[error("{path}: {width}x{height} is smaller than one {patch}x{patch} LR patch at scale {scale}")]
    TooSmall { path: PathBuf, width: u32, height: u32, patch: u32, scale: u32 },
    #[error("{path}: LR is {got_w}x{got_h}, expected {want_w}x{want_h} (HR {hr} / scale {scale})")]
    LrSize { path: PathBuf, hr: PathBuf, got_w: u32, got_h: u32, want_w: u32, want_h: u32, scale: u32 },
    #[error("{path}: no LR image paired with this HR image in {lr_dir}")]
    Unpaired { path: PathBuf, lr_dir: PathBuf },
    #[error("{path}: same stem as {first}: their sample ids and LR file names would collide; skipped (rename one)")]
    DuplicateStem { path: PathBuf, first: PathBuf },
    /// An input fault found while listing (recorded as skipped), raised again by a strict run.
    #[error("{reason}")]
    Input { path: PathBuf, reason: String },
    #[error("{path}: ingest worker panicked on this image: {what} (a bug in srcache: please report it)")]
    Panic { path: PathBuf, what: String },
    #[error("{path}: the ingest workers stopped before this image was processed")]
    WorkersLost { path: PathBuf },
    #[error("{path}: cannot write")]
    Write {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("{path}: {what}")]
    Resume { path: PathBuf, what: String },
    /// An output that would overwrite or mix with what srcache did not write; nothing was changed.
    #[error("{path}: {what}")]
    Refused { path: PathBuf, what: String },
    /// An input file whose bytes are not the ones fingerprinted when the run started: replaced while the run
    /// was reading it. Not a skippable input fault: its samples would silently mix two versions.
    #[error("{path}: changed while the run was reading it ({what}); nothing from it was written: rerun once the input folder is stable")]
    Changed { path: PathBuf, what: String },
    #[error("{path}: nothing written: {summary}")]
    NoSamples { path: PathBuf, summary: String },
    #[error("bad ingest configuration: {what}")]
    Config { what: String },
    #[error(transparent)]
    Format(#[from] srcache_formats::FormatError),
}

pub type Result<T> = std::result::Result<T, IngestError>;

impl IngestError {
    pub(crate) fn decode(path: &Path, source: impl Into<BoxError>) -> Self {
        IngestError::Decode { path: path.to_path_buf(), source: source.into() }
    }

    pub(crate) fn write(path: &Path, source: impl Into<BoxError>) -> Self {
        IngestError::Write { path: path.to_path_buf(), source: source.into() }
    }

    /// Whether this is a fault of one input file (unreadable, undecodable, too small, unpaired, a duplicate):
    /// a non-strict run skips the file and records why. Everything else (an output write failing, a worker
    /// panicking or vanishing, a bad configuration) ends the run: skipping would hide it.
    pub fn is_input_fault(&self) -> bool {
        matches!(
            self,
            IngestError::ReadDir { .. }
                | IngestError::Unreadable { .. }
                | IngestError::NotAFile { .. }
                | IngestError::Decode { .. }
                | IngestError::TooLarge { .. }
                | IngestError::SmallerThanScale { .. }
                | IngestError::TooSmall { .. }
                | IngestError::LrSize { .. }
                | IngestError::Unpaired { .. }
                | IngestError::DuplicateStem { .. }
                | IngestError::Input { .. }
        )
    }

    /// The message with its causes on one line ("file: what: cause"), as skipped lists store it.
    pub fn chain(&self) -> String {
        srcache_formats::error_chain(self)
    }
}

/// A file the run skipped, and why (reported at the end, and in the manifest's skipped list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Stored as text; a name that is not UTF-8 is written with U+FFFD replacement characters (a JSON string
    /// cannot hold it, and failing the whole manifest over one file name would be worse).
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub reason: String,
}

impl Skipped {
    /// `error`'s file (`path`) and its whole cause chain as the reason.
    pub fn new(path: &Path, error: &IngestError) -> Self {
        Skipped { path: path.to_path_buf(), reason: error.chain() }
    }

    /// The error a strict run fails with instead of skipping this file.
    pub fn to_error(&self) -> IngestError {
        let path = self.path.display().to_string();
        let reason = if self.reason.contains(&path) { self.reason.clone() } else { format!("{path}: {}", self.reason) };
        IngestError::Input { path: self.path.clone(), reason }
    }
}

fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// One line for "nothing was written": how many images were skipped, the first few with their reasons.
pub fn summarise_skipped(images: usize, skipped: &[Skipped]) -> String {
    const SHOWN: usize = 3;
    if skipped.is_empty() {
        return format!("{images} image(s) read, none gave a patch (patch larger than the images, or every patch below --flat-threshold)");
    }
    let first: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(|s| {
            let path = s.path.display().to_string();
            if s.reason.contains(&path) {
                s.reason.clone()
            } else {
                format!("{path}: {}", s.reason)
            }
        })
        .collect();
    let more = if skipped.len() > SHOWN { format!("; and {} more", skipped.len() - SHOWN) } else { String::new() };
    format!("{} input file(s) skipped ({}{more})", skipped.len(), first.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no way in");
        let e = IngestError::write(Path::new("/o/x.png"), io);
        assert_eq!(e.to_string(), "/o/x.png: cannot write");
        assert!(std::error::Error::source(&e).is_some_and(|s| s.to_string() == "no way in"));
        assert_eq!(e.chain(), "/o/x.png: cannot write: no way in");
        assert!(!e.is_input_fault());
    }

    #[test]
    fn non_utf8_paths_serialise() {
        use std::os::unix::ffi::OsStrExt;
        let p = PathBuf::from(std::ffi::OsStr::from_bytes(b"/d/bad\xffname.png"));
        let s = Skipped { path: p, reason: "r".into() };
        let json = serde_json::to_string(&[s]).expect("serialises");
        assert!(json.contains("bad\u{fffd}name.png"), "{json}");
    }
}
