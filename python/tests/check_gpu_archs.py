#!/usr/bin/env python3
"""Checks python/tools/make_gpu_experts.py end to end on CPU at a small size (needs only torch).

Runs make_gpu_experts.py into a temp dir (--size 16 --batch 2), then loads rrdb.pt and swinir.pt back and
checks: parameter counts against the real models, output shapes and dtypes, finiteness, that sr is
image-like (not constant, mostly inside [0, 1], bicubic + a residual of the calibrated size) and depends on
the input, the trace-vs-eager differences recorded in experts.json, that rrdb.pt runs at another
(non-square) size and batch 1, and that swinir.pt at a size other than the traced one fails loudly.
Prints timings. Usage: check_gpu_archs.py [--size 16] [--keep DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import gpu_archs as ga  # noqa: E402


def check(cond, msg):
    if not cond:
        sys.exit(f"FAIL: {msg}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--keep", help="write the experts here instead of a temp dir")
    a = p.parse_args()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = a.keep or tmp
        t0 = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(HERE, "..", "tools", "make_gpu_experts.py"), out, "--size",
                        str(a.size), "--batch", "2"], check=True)
        t_make = time.perf_counter() - t0
        meta = json.load(open(os.path.join(out, "experts.json")))
        check(meta["traced_size"] == a.size and meta["seed"] == 0, f"experts.json header {meta}")
        x = ga.smooth_images(12345, a.size, 2)
        base = F.interpolate(x, scale_factor=4.0, mode="bicubic", align_corners=False)
        for arch, want_params, want_c in (("rrdb", ga.RRDB_X4PLUS_PARAMS, 64), ("swinir", ga.SWINIR_M_X4_PARAMS, 180)):
            e = meta["experts"][arch]
            check(e["params"] == want_params, f"{arch}: {e['params']} params, want {want_params}")
            check(max(e["trace_vs_eager_max_abs"].values()) <= 1e-4,
                  f"{arch}: trace vs eager {e['trace_vs_eager_max_abs']}")
            check(e["traced_size"] == (8 if arch == "rrdb" else a.size), f"{arch}: traced_size {e['traced_size']}")
            m = torch.jit.load(os.path.join(out, e["file"]), map_location="cpu")
            check(sum(p.numel() for p in m.parameters()) == want_params, f"{arch}: loaded param count")
            t0 = time.perf_counter()
            with torch.no_grad():
                sr, feat = m(x)
            t_fwd = time.perf_counter() - t0
            check(sr.dtype == torch.float32 and feat.dtype == torch.float32, f"{arch}: dtypes {sr.dtype} {feat.dtype}")
            check(tuple(sr.shape) == (2, 3, 4 * a.size, 4 * a.size), f"{arch}: sr shape {tuple(sr.shape)}")
            check(tuple(feat.shape) == (2, want_c, a.size, a.size), f"{arch}: feat shape {tuple(feat.shape)}")
            check(bool(torch.isfinite(sr).all() and torch.isfinite(feat).all()), f"{arch}: non-finite output")
            res = sr - base
            outside = ((sr < 0) | (sr > 1)).float().mean().item()
            diff01 = (res[0] - res[1]).std().item()
            check(sr.std().item() > 0.1, f"{arch}: sr std {sr.std().item()} (near-constant)")
            check(0.03 < res.std().item() < 0.3, f"{arch}: residual std {res.std().item()}")
            check(outside < 0.15, f"{arch}: {outside:.1%} of sr outside [0, 1]")
            check(diff01 > 0.03, f"{arch}: residuals of two different inputs barely differ ({diff01})")
            check(feat.std().item() > 1e-3, f"{arch}: feat near-constant")
            if arch == "rrdb":  # any size, any batch
                y = ga.smooth_images(7, 16, 1)[:, :, :12, :]
                with torch.no_grad():
                    sr2, feat2 = m(y)
                check(tuple(sr2.shape) == (1, 3, 48, 64) and tuple(feat2.shape) == (1, 64, 12, 16),
                      f"rrdb at 12x16: {tuple(sr2.shape)} {tuple(feat2.shape)}")
            else:  # traced size only
                y = ga.smooth_images(7, a.size + 8, 1)
                try:
                    with torch.no_grad():
                        m(y)
                    failed = False
                except RuntimeError:
                    failed = True
                check(failed, f"swinir.pt traced at {a.size} ran on {a.size + 8}x{a.size + 8} without an error")
            print(f"ok {arch}: {want_params:,} params, sr min/max/mean/std {sr.min():.3f}/{sr.max():.3f}/"
                  f"{sr.mean():.3f}/{sr.std():.3f}, residual std {res.std():.3f}, {outside:.1%} outside [0,1], "
                  f"trace {e['trace_s']:.2f}s, first forward of the loaded file {t_fwd / 2 * 1e3:.0f} ms per "
                  f"{a.size}x{a.size} patch (incl. TorchScript warm-up), "
                  f"{e['bytes'] / 1e6:.1f} MB", flush=True)
    print(f"ok check_gpu_archs: make_gpu_experts {t_make:.1f}s, total {time.perf_counter() - t_all:.1f}s")


if __name__ == "__main__":
    main()
