#!/usr/bin/env bash
# The main job, from a fresh clone: set-up (idempotent), release build, then the end-to-end demo on the
# built-in photographs and built-in experts (ingest -> cache -> train -> eval). Extra arguments go to `srcache demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
cargo build --release --locked -p srcache
target/release/srcache doctor
exec target/release/srcache demo "$@"
