#!/usr/bin/env python3
"""Builds the two random-weight GPU-check experts (python/gpu_archs.py) and writes them as TorchScript.

Usage: make_gpu_experts.py OUTDIR [--size 64] [--device cpu|cuda] [--seed 0] [--batch 2]

Writes OUTDIR/rrdb.pt (RRDBNet, Real-ESRGAN x4plus size), OUTDIR/swinir.pt (SwinIR-M x4 size) and
OUTDIR/experts.json. Needs only `torch` (no spandrel, no network). Both follow the expert contract
forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,C,h,w]).

* Weights: built and calibrated on CPU from --seed (same on every machine for one torch version, up to
  last-bit differences in conv_last from the CPU calibration forward; do not compare sha256 across machines).
* Tracing is always done on CPU in f32, so the saved graphs carry no device constants: load them with
  map_location cpu or cuda (or .to(device) after loading) and they run there.
* rrdb.pt accepts any h, w and any batch. swinir.pt is traced at --size: it is valid ONLY for
  --size x --size inputs (its shifted-window attention masks are per-size buffers), any batch.
* Both are traced at batch 1 (RRDB at 8x8, SwinIR at --size). Before a file gets its final name it is saved,
  loaded back on CPU and checked against the eager model: max |traced - eager| over sr and feat on --batch
  seeded smooth images at --size (so the check also covers the dynamic batch, and for RRDB another size).
* --device cuda: the saved file is also loaded onto CUDA, run (TF32 off), compared with the CPU eager output
  and timed; and, for information only, run .half() on half input (sr PSNR against f32, timing).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_archs as ga  # noqa: E402

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=".*meshgrid.*")

TRACE_TOL = 1e-4  # traced vs eager on the same device: same kernels, expected 0
RRDB_TRACE_SIZE = 8
CUDA_TOL = 1e-3  # CUDA (TF32 off) vs CPU eager: max abs diff / max(1, max abs value), over sr and feat


def maxdiff(a, b):
    return max((x.float() - y.float().to(x.device)).abs().max().item() for x, y in zip(a, b))


def relmaxdiff(a, b):
    return max((x.float() - y.float().to(x.device)).abs().max().item() / max(1.0, x.abs().max().item())
               for x, y in zip(a, b))


def psnr(a, b):
    mse = (a.float() - b.float().to(a.device)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def fp16_report(path, device, y, sr32, reps):
    """Informative only: the file loaded, .half()'ed (params and float buffers) and run on half input, as a
    half-precision GPU run would. PSNR of its sr against the f32 CPU eager sr (peak 1, no clamp)."""
    try:
        m = torch.jit.load(path, map_location=device).half()
        with torch.no_grad():
            sr16, feat16 = m(y.to(device).half())
        out = {"sr_dtype": str(sr16.dtype), "feat_dtype": str(feat16.dtype),
               "finite": bool(torch.isfinite(sr16).all() and torch.isfinite(feat16).all()),
               "psnr_vs_f32_db": psnr(sr32, sr16)}
        if reps:
            out["s_per_patch"] = time_forward(m, y.to(device).half(), max(reps, 5))
        return out
    except Exception as e:  # informative: never fails the script
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def stats(t):
    t = t.float()
    return {"min": t.min().item(), "max": t.max().item(), "mean": t.mean().item(), "std": t.std().item()}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_forward(m, x, reps):
    with torch.no_grad():
        m(x)  # warm-up (the first calls of a loaded TorchScript module are slow: executor set-up, profiling)
        sync(x.device)
        t = time.perf_counter()
        for _ in range(reps):
            m(x)
        sync(x.device)
    return (time.perf_counter() - t) / reps / x.shape[0]


def make(arch, a, out_dir, device):
    t0 = time.perf_counter()
    expert = ga.build(arch, seed=a.seed, size=a.size)
    t_build = time.perf_counter() - t0
    scale = 4
    params = ga.count_params(expert)
    # RRDB is size-independent, so it is traced at a tiny size; SwinIR only works at its traced size. Both
    # are traced at batch 1 and checked at --batch, which checks that the batch dimension stayed dynamic.
    trace_size = RRDB_TRACE_SIZE if arch == "rrdb" else a.size
    x = ga.smooth_images(a.seed + 100, trace_size, 1)
    y = ga.smooth_images(a.seed + 200, a.size, a.batch)
    with torch.no_grad():
        t0 = time.perf_counter()
        traced = torch.jit.trace(expert, x, check_trace=False)
        t_trace = time.perf_counter() - t0
        eager = expert(y)
    sr, feat = eager
    want_sr = (a.batch, 3, scale * a.size, scale * a.size)
    if tuple(sr.shape) != want_sr or feat.shape[0] != a.batch or tuple(feat.shape[2:]) != (a.size, a.size):
        sys.exit(f"error: {arch}: sr {tuple(sr.shape)} / feat {tuple(feat.shape)}, want sr {want_sr}")
    if not (torch.isfinite(sr).all() and torch.isfinite(feat).all()):
        sys.exit(f"error: {arch}: non-finite output")
    if "cuda" in str(traced.inlined_graph):
        sys.exit(f"error: {arch}: the traced graph names a CUDA device")

    # Save to a temporary name, load that back on CPU and compare with the eager model; only a file that
    # passes gets its final name.
    path = os.path.join(out_dir, f"{arch}.pt")
    tmp = path + ".tmp"
    traced.save(tmp)
    loaded = torch.jit.load(tmp, map_location="cpu")
    with torch.no_grad():
        err = maxdiff(eager, loaded(y))
    checks = {f"traced b1@{trace_size}, run b{a.batch}@{a.size}": err}
    if err > TRACE_TOL:
        os.remove(tmp)
        sys.exit(f"error: {arch}: traced module (saved and loaded back) differs from the eager model by {err}")
    os.replace(tmp, path)

    base = torch.nn.functional.interpolate(y, scale_factor=4.0, mode="bicubic", align_corners=False)
    info = {
        "file": f"{arch}.pt",
        "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "params": params,
        "reference_params": ga.RRDB_X4PLUS_PARAMS if arch == "rrdb" else ga.SWINIR_M_X4_PARAMS,
        "scale": scale,
        "feat_channels": feat.shape[1],
        "traced_size": trace_size,
        "valid_sizes": "any h, w >= 1" if arch == "rrdb" else f"only {a.size}x{a.size}",
        "dynamic_batch": True,
        "trace_vs_eager_max_abs": checks,
        "sr_stats": stats(sr),
        "sr_outside_01_frac": ((sr < 0) | (sr > 1)).float().mean().item(),
        "residual_std": (sr - base).std().item(),
        "feat_stats": stats(feat),
        "build_s": round(t_build, 3),
        "trace_s": round(t_trace, 3),
    }
    if a.time_reps:
        info["cpu_s_per_patch"] = time_forward(loaded, y, a.time_reps)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        on_gpu = torch.jit.load(path, map_location=device)
        with torch.no_grad():
            cuda_err = relmaxdiff(eager, on_gpu(y.to(device)))
        info["cuda_vs_cpu_rel_max_abs"] = cuda_err
        if cuda_err > CUDA_TOL:
            sys.exit(f"error: {arch}: on CUDA the module differs from the CPU eager model by {cuda_err} "
                     f"(max abs diff / max(1, max abs value))")
        info["cuda_s_per_patch"] = time_forward(on_gpu, y.to(device), max(a.time_reps, 5))
        info["cuda_fp16"] = fp16_report(path, device, y, sr, a.time_reps)
    print(f"{path}: {params:,} params (reference {info['reference_params']:,}), feat C={info['feat_channels']}, "
          f"traced at {trace_size}x{trace_size} in {t_trace:.2f}s, "
          f"max |traced - eager| at b{a.batch}@{a.size} = {err:.2e}, "
          f"sr min/max/mean/std = {info['sr_stats']['min']:.3f}/{info['sr_stats']['max']:.3f}/"
          f"{info['sr_stats']['mean']:.3f}/{info['sr_stats']['std']:.3f}, {info['bytes'] / 1e6:.1f} MB"
          + (f", cpu {info['cpu_s_per_patch'] * 1e3:.0f} ms/patch" if "cpu_s_per_patch" in info else "")
          + (f", cuda {info['cuda_s_per_patch'] * 1e3:.2f} ms/patch (rel |cuda - cpu| "
             f"{info['cuda_vs_cpu_rel_max_abs']:.1e}), fp16 {info['cuda_fp16']}" if "cuda_s_per_patch" in info else ""),
          flush=True)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--size", type=int, default=64, help="LR patch size SwinIR is traced at (multiple of 8, > 8)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: also run the saved files on CUDA, compare with CPU and time them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2, help="batch of the trace and of the checks")
    p.add_argument("--time-reps", type=int, default=0, help="also time the saved module on CPU (reps)")
    p.add_argument("--arch", action="append", choices=["rrdb", "swinir"], help="default: both")
    a = p.parse_args(argv)
    if a.size % 8 or a.size <= 8:
        p.error("--size must be a multiple of 8 and larger than 8 (SwinIR window_size 8)")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False")
    os.makedirs(a.outdir, exist_ok=True)
    experts = {arch: make(arch, a, a.outdir, device) for arch in (a.arch or ["rrdb", "swinir"])}
    meta = {
        "seed": a.seed,
        "traced_size": a.size,
        "batch": a.batch,
        "torch": torch.__version__,
        "residual_std_target": ga.RESIDUAL_STD,
        "contract": "forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,C,h,w]); "
                    "sr = bicubic_x4(lr) + random-weight net (GPU-check stand-in, see python/gpu_archs.py)",
        "experts": experts,
    }
    with open(os.path.join(a.outdir, "experts.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
