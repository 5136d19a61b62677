//! Helpers shared by the end-to-end tests (paths to the built binary and the project venv).
