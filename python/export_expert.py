#!/usr/bin/env python3
"""Export a super-resolution checkpoint to an srcache expert: a thin wrapper over `python -m srcache.export`
(python/srcache/export.py), kept so existing scripts and docs keep working. See that module for the options:
--out FILE.pt2 writes an AOTInductor package that takes any LR size, --out FILE.pt a traced TorchScript module.
"""
import os
import sys

# Runnable without the package installed (e.g. straight from a checkout).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from srcache.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
