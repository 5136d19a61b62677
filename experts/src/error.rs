//! Errors of the experts crate. Each names the expert, file or image it is about; causes are kept as
//! `source` so the CLI can print the whole chain.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = ExpertError> = std::result::Result<T, E>;

/// A libtorch error reduced to what a user can act on. libtorch's own text carries a C++ backtrace (and for
/// TorchScript a Python-style traceback of the scripted code); `Display` keeps the message, `Debug` keeps all.
pub struct TorchFailure(pub Box<tch::TchError>);

impl TorchFailure {
    /// The meaningful line(s) of a libtorch message.
    pub fn summary(&self) -> String {
        summarize(&self.0.to_string())
    }

    /// Whether libtorch reported an out-of-memory condition (it only says so in text).
    pub fn is_oom(&self) -> bool {
        let s = self.0.to_string();
        s.contains("out of memory") || s.contains("CUDA_ERROR_OUT_OF_MEMORY") || s.contains("DefaultCPUAllocator: can't allocate")
    }
}

impl fmt::Display for TorchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl fmt::Debug for TorchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for TorchFailure {}

impl From<tch::TchError> for TorchFailure {
    fn from(e: tch::TchError) -> Self {
        TorchFailure(Box::new(e))
    }
}

/// A TOML parse or schema error on one line: `line L, column C: <message>` (the toml crate's own text draws the
/// offending line over several lines, which does not fit an `error: ...` line).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            let col = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Strips libtorch's C++ frames and TorchScript tracebacks, keeping the error line(s).
pub fn summarize(text: &str) -> String {
    let text = text.trim();
    // TorchScript: "The following operation failed in the TorchScript interpreter. Traceback ... RuntimeError: X"
    if text.contains("TorchScript") {
        if let Some(line) = text.lines().rev().find(|l| {
            let l = l.trim_start();
            l.starts_with("RuntimeError:") || l.starts_with("ValueError:") || l.starts_with("IndexError:") || l.starts_with("TypeError:")
        }) {
            return format!("TorchScript: {}", line.trim());
        }
    }
    let mut keep = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Exception raised from") || t.starts_with("frame #") || t.starts_with("Traceback") {
            break;
        }
        if !t.is_empty() {
            keep.push(t);
        }
        if keep.len() == 3 {
            break;
        }
    }
    let s = keep.join(" ");
    // tch prefixes its own error kind ("Internal torch error: ").
    let s = s.strip_prefix("Internal torch error: ").unwrap_or(&s).to_string();
    if s.is_empty() {
        "libtorch error (no message)".to_string()
    } else {
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExpertError {
    #[error("expert {name}: {path}: {reason}")]
    Load { name: String, path: PathBuf, reason: String },
    #[error("expert {name}: {path} is not a loadable TorchScript module")]
    Script {
        name: String,
        path: PathBuf,
        #[source]
        source: TorchFailure,
    },
    #[error("expert {name} ({source_desc}) upscales by {got}x but the run's scale is {expected}x")]
    ScaleMismatch { name: String, source_desc: String, expected: u32, got: u32 },
    #[error("expert {name} ({source_desc}): {what}")]
    BadOutput { name: String, source_desc: String, what: String },
    /// The expert failed on an input size: traced transformer experts only accept the size they were traced at.
    #[error("expert {name} ({source_desc}) fails on a {h}x{w} input{hint}")]
    InputSize {
        name: String,
        source_desc: String,
        h: i64,
        w: i64,
        hint: String,
        #[source]
        source: TorchFailure,
    },
    /// A size the expert's own metadata (written by `python -m srcache.export`) says it cannot take: refused
    /// before it runs. `accepts` names the sizes that work; `fix` the flag or export command that helps.
    #[error("expert {name} ({source_desc}) cannot take a {h}x{w} input: it accepts {accepts}{fix}")]
    SizeRefused { name: String, source_desc: String, h: usize, w: usize, accepts: String, fix: String },
    #[error("{context}")]
    Torch {
        context: String,
        #[source]
        source: TorchFailure,
    },
    #[error("unknown built-in expert {name:?} (bicubic, lanczos3, sharp_bicubic)")]
    UnknownBuiltin { name: String },
    #[error("bad expert spec {spec:?}: {why}")]
    Spec { spec: String, why: String },
    #[error("bad device {spec:?}: {why}")]
    Device { spec: String, why: String },
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Image {
        path: PathBuf,
        what: String,
        #[source]
        source: Option<Box<srcache_ingest::IngestError>>,
    },
    #[error("fusion model {path}: {what}")]
    Fusion { path: PathBuf, what: String },
    /// A baseline row of `srcache eval` (linear blend, self-ensemble) that cannot be computed.
    #[error("baseline {which}: {what}")]
    Baseline { which: &'static str, what: String },
    #[error("while evaluating")]
    Callback {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fusion model")]
    Fuser {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Format(#[from] Box<srcache_formats::FormatError>),
}

impl ExpertError {
    pub fn is_oom(&self) -> bool {
        match self {
            ExpertError::Torch { source, .. } | ExpertError::InputSize { source, .. } => source.is_oom(),
            _ => false,
        }
    }
}

/// `map_err` helper: wraps a libtorch error with what was being done.
pub fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> ExpertError {
    let context = context.into();
    move |e| ExpertError::Torch { context, source: e.into() }
}

impl From<srcache_formats::FormatError> for ExpertError {
    fn from(e: srcache_formats::FormatError) -> Self {
        ExpertError::Format(Box::new(e))
    }
}

impl From<tch::TchError> for ExpertError {
    fn from(e: tch::TchError) -> Self {
        ExpertError::Torch { context: "tensor operation".into(), source: e.into() }
    }
}
