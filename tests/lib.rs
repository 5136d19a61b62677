//! Helpers shared by the end-to-end tests: where the workspace, the built binary, the project venv and the
//! built-in photos are. Tests fail (never skip) when a piece is missing: CI builds and installs all of them.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The release `srcache` binary. `.ci/run` builds it before the tests run.
pub fn srcache_bin() -> PathBuf {
    let bin = workspace().join("target/release/srcache");
    assert!(bin.exists(), "{} is missing: run `cargo build --release` first (.ci/run does)", bin.display());
    bin
}

/// The project venv's python (scripts/setup.sh makes it).
pub fn venv_python() -> PathBuf {
    let py = workspace().join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/setup.sh first (.ci/run does)", py.display());
    py
}

/// The real photographs shipped for tests and the demo (public domain / CC0, see their LICENSE.md).
pub fn photos_dir() -> PathBuf {
    workspace().join("ingest/assets/photos")
}
