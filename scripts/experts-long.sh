#!/usr/bin/env bash
# The long experts-v2 check (issue 20), not part of CI: every test architecture — SRVGG compact, SwinIR, HAT,
# DAT, RRDB (random-weight spandrel models at small widths, python/tests/make_v2_experts.py) — exported by
# `python -m srcache.export` as an AOTInductor package (.pt2) as well as TorchScript, then the whole
# tests/tests/experts_v2.rs suite on them: srcache vs spandrel's eager model (<= 1e-4) on odd sizes and any
# batch, `cache` at LR patch 32, 48 and 64, `eval` / `infer` on a 75x112 LR image, pixels of each package
# against its TorchScript twin. CI exports only compact and SwinIR as .pt2, because AOTInductor compiles C++ at
# export: 2-5 minutes per tiny model on 2 busy cores; the one run here took 25 minutes (load 9-13).
#
#   scripts/experts-long.sh [ARCHS]        (ARCHS: comma list, default compact,swinir,hat,dat,rrdb)
#
# Needs the project .venv (scripts/setup.sh: torch, spandrel) and a release build; prints the test log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ARCHS=${1:-compact,swinir,hat,dat,rrdb}
t0=$(date +%s)
SRCACHE_V2_PT2=$ARCHS cargo test --release -p srcache-tests --test experts_v2 -- --test-threads=2 --nocapture
echo "experts-long: .pt2 for $ARCHS: passed in $(( $(date +%s) - t0 )) s"
