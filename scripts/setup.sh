#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: a project-local .venv with the pinned Python packages,
# libtorch included (torch 2.11.0 from PyPI is what tch 0.24.0 links against). Nothing is fetched from anywhere
# but PyPI and crates.io. Re-running is cheap: it returns at once when .venv already matches requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.srcache-requirements
if [ -f "$stamp" ] && cmp -s requirements.txt "$stamp"; then
  exit 0
fi
echo "==> creating .venv with pinned packages (torch 2.11.0 is large: a few minutes on first run)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python - <<'PY'
import torch, sys
assert torch.__version__.split("+")[0] == "2.11.0", f"torch {torch.__version__}, srcache needs 2.11.0 (tch 0.24.0)"
print(f"==> torch {torch.__version__} ready in .venv", file=sys.stderr)
PY
cp requirements.txt "$stamp"
