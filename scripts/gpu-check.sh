#!/usr/bin/env bash
# The GPU check (issue #11): one prepared run on a CUDA machine that has only a CUDA build of torch 2.11 in some
# Python environment (no Rust, no network, no spandrel, no project .venv). Writes OUTDIR/report.md and
# OUTDIR/report.json (+ commands.log); exits non-zero if any check fails. At most ~8 minutes on one data-centre GPU.
#
#   scripts/gpu-check.sh [OUTDIR] [--quick] [--pt2-wait S]     (OUTDIR default: gpu-check-out)
#
# The srcache binary is built beforehand (cargo build --release -p srcache), stripped (about 20 MB) and carried
# to the machine: $SRCACHE_BIN, else .gpu/srcache, else target/release/srcache. It runs against that machine's
# torch: the lib/ of `python -c 'import torch'` (python = $SRCACHE_PYTHON, else /opt/torch/.venv/bin/python,
# else python3, else .venv/bin/python), or $SRCACHE_TORCH_LIB. The experts are made on the spot with random
# weights in plain PyTorch (python/tools/gpu_archs.py): an RRDB of Real-ESRGAN x4plus size and a SwinIR-M, as
# TorchScript and as AOTInductor packages (.pt2) compiled on the spot for the device in fp32, fp16 and bf16.
# $SRCACHE_GPU_CHECK_DEVICE (default cuda:0) picks the device; `cpu` with --quick runs every check on the CPU at
# small sizes, which is how this script is tested where there is no GPU (its figures are not GPU figures).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=gpu-check-out
QUICK=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK+=(--quick) ;;
    --pt2-wait) QUICK+=(--pt2-wait "$2"); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) OUT=$1 ;;
  esac
  shift
done
DEVICE=${SRCACHE_GPU_CHECK_DEVICE:-cuda:0}

PY=${SRCACHE_PYTHON:-}
if [ -z "$PY" ]; then
  for c in /opt/torch/.venv/bin/python python3 "$REPO/.venv/bin/python"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "gpu-check: no Python with torch found (set SRCACHE_PYTHON)" >&2; exit 2; }
TORCH_LIB=${SRCACHE_TORCH_LIB:-$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
BIN=${SRCACHE_BIN:-}
if [ -z "$BIN" ]; then
  for c in "$REPO/.gpu/srcache" "$REPO/target/release/srcache"; do [ -x "$c" ] && { BIN=$c; break; }; done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "gpu-check: no srcache binary (build it, strip it into .gpu/srcache, or set SRCACHE_BIN)" >&2; exit 2; }
# The binary's rpath points at the build machine's libtorch; LD_LIBRARY_PATH wins over it.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$OUT"
echo "gpu-check: python $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda available:", torch.cuda.is_available())')), torch lib $TORCH_LIB, binary $BIN, device $DEVICE"
if [[ $DEVICE == cuda* ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  # Still record doctor's view in the report, then fail with one clear line.
  "$PY" "$REPO/python/tools/gpu_check.py" "$OUT" --bin "$BIN" --device "$DEVICE" "${QUICK[@]}" || true
  echo "gpu-check: FAIL: no CUDA device visible to torch on this machine (report: $OUT/report.md)"
  exit 1
fi
exec "$PY" "$REPO/python/tools/gpu_check.py" "$OUT" --bin "$BIN" --device "$DEVICE" "${QUICK[@]}"
