"""Times one expert as eager PyTorch, traced TorchScript and an AOTInductor package (.pt2), on the CPU, in
one process on the same inputs: `python -m srcache.bench_export --arch rrdb|swinir|compact [--size 64]`.

Real-size random-weight models (timing does not depend on the weights): RRDB = Real-ESRGAN x4plus (64 feat,
23 blocks), SwinIR = SwinIR-M classical x4 (embed 180, depths 6x6, window 8), compact = realesr-general-x4v3
(64 feat, 32 convs). The exports go through srcache.export exactly as a user's would (padding wrapper, hooked
feature map), so the figures are those of the experts srcache runs. Prints a table and, with --json, writes it.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from srcache import export as E


def model(arch):
    if arch == "rrdb":
        from spandrel.architectures.ESRGAN import ESRGAN

        return ESRGAN(num_filters=64, num_blocks=23, scale=4)
    if arch == "swinir":
        from spandrel.architectures.SwinIR import SwinIR

        return SwinIR(img_size=64, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=8, mlp_ratio=2.0,
                      upscale=4, upsampler="pixelshuffle", resi_connection="1conv")
    if arch == "compact":
        from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

        return SRVGGNetCompact(num_feat=64, num_conv=32, upscale=4)
    raise SystemExit(f"unknown arch {arch}")


def time_it(fn, x, reps):
    with torch.no_grad():
        fn(x)  # warm-up (first-run allocations, lazy init)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=["rrdb", "swinir", "compact"])
    p.add_argument("--size", type=int, default=64, help="LR side (the TorchScript trace is made at this size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dir", help="keep the exports here (default: a temporary folder)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    d = a.dir or tempfile.mkdtemp(prefix="srcache-bench-")
    os.makedirs(d, exist_ok=True)
    ckpt = os.path.join(d, f"{a.arch}.pth")
    torch.save(model(a.arch).state_dict(), ckpt)
    expert, meta = E.build(E.load_state_dict(ckpt))
    pt2, ts = os.path.join(d, f"{a.arch}.pt2"), os.path.join(d, f"{a.arch}.pt")
    t0 = time.perf_counter()
    if not os.path.exists(pt2):
        E.export_pt2(expert, meta, pt2)
    t_pt2 = time.perf_counter() - t0
    t0 = time.perf_counter()
    E.export_torchscript(expert, meta, ts, a.size)
    t_ts = time.perf_counter() - t0
    torch.set_num_threads(a.threads)
    x = torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(1))
    runs = {"eager": expert, "torchscript": torch.jit.load(ts).eval(), "pt2": torch._inductor.aoti_load_package(pt2)}
    ref = None
    rows = []
    for name, fn in runs.items():
        med, best = time_it(fn, x, a.reps)
        with torch.no_grad():
            out = fn(x)
        ref = out if ref is None else ref
        rows.append({"format": name, "median_s": med, "min_s": best, "max_abs_diff_vs_eager": E._max_diff(ref, out)})
    print(f"{a.arch} LR {a.batch}x3x{a.size}x{a.size}, {a.threads} thread(s), median of {a.reps}; export: pt2 "
          f"{t_pt2:.0f} s, torchscript {t_ts:.1f} s")
    for r in rows:
        print(f"  {r['format']:<12} {r['median_s'] * 1000:9.1f} ms (min {r['min_s'] * 1000:.1f})  "
              f"x{rows[0]['median_s'] / r['median_s']:.2f} vs eager  max|d| {r['max_abs_diff_vs_eager']:.1e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"arch": a.arch, "size": a.size, "batch": a.batch, "threads": a.threads, "reps": a.reps,
                       "export_s": {"pt2": t_pt2, "torchscript": t_ts}, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
