#!/usr/bin/env bash
# Installs the built srcache binary where it finds a torch 2.11 without LD_LIBRARY_PATH:
#   scripts/install.sh [PREFIX] [--python PY]
# PREFIX/bin/srcache is the binary; PREFIX/lib/srcache/torch is a link to the torch package of PY (default: the
# active environment's python, else the project .venv), which the binary's RUNPATH looks in
# ($ORIGIN/../lib/srcache/torch/lib). Installed into a Python environment (PREFIX = $VIRTUAL_ENV, the default
# when one is active), the binary uses that environment's own torch ($ORIGIN/../lib/python3.X/site-packages/
# torch/lib) and no link is needed. Default PREFIX without an active environment: ~/.local.
# The binary is stripped (its line tables make it ~9x larger; backtraces keep function names).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=""
PY=""
while [ $# -gt 0 ]; do
  case $1 in
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) PREFIX=$1; shift ;;
  esac
done
PREFIX=${PREFIX:-${VIRTUAL_ENV:-$HOME/.local}}
BIN=${SRCACHE_BIN:-$REPO/target/release/srcache}
[ -x "$BIN" ] || { echo "install.sh: no binary at $BIN: run 'cargo build --release' first" >&2; exit 2; }
if [ -z "$PY" ]; then
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch' 2>/dev/null; then PY=python3; else PY=$REPO/.venv/bin/python; fi
fi
TORCH=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))') ||
  { echo "install.sh: $PY has no torch: give --python PATH of a Python with torch==2.11.0 (scripts/setup.sh makes $REPO/.venv)" >&2; exit 2; }
VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
[ "$VERSION" = 2.11.0 ] || { echo "install.sh: $PY has torch $VERSION; srcache is built against torch 2.11.0 (tch 0.24.0)" >&2; exit 2; }
mkdir -p "$PREFIX/bin" "$PREFIX/lib/srcache"
cp "$BIN" "$PREFIX/bin/srcache.tmp"
strip "$PREFIX/bin/srcache.tmp" 2>/dev/null || true
mv "$PREFIX/bin/srcache.tmp" "$PREFIX/bin/srcache"
ln -sfn "$TORCH" "$PREFIX/lib/srcache/torch"
echo "installed $PREFIX/bin/srcache (torch $VERSION from $TORCH)"
"$PREFIX/bin/srcache" --version
