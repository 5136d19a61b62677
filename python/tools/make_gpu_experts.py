#!/usr/bin/env python3
"""Builds the two random-weight GPU-check experts (python/tools/gpu_archs.py) and writes them as TorchScript,
and (--pt2) as AOTInductor packages.

Usage: make_gpu_experts.py OUTDIR [--size 64] [--device cpu|cuda] [--seed 0] [--batch 2] [--tiny]
       make_gpu_experts.py OUTDIR --pt2 fp32,fp16,bf16 [--arch rrdb] [--device cuda] [--tiny]

Writes OUTDIR/rrdb.pt (RRDBNet, Real-ESRGAN x4plus size), OUTDIR/swinir.pt (SwinIR-M x4 size), their state
dicts (OUTDIR/ARCH.weights.pt) and OUTDIR/experts.json. Needs only `torch` (no spandrel, no network). Both follow the expert contract
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
* --pt2 DTYPES: for each --arch (default both) and each dtype, OUTDIR/ARCH.DTYPE.pt2, an AOTInductor package
  compiled for --device through torch.export with dynamic batch, height and width (what `python -m
  srcache.export` makes from a spandrel checkpoint, here from the plain-PyTorch architectures, since the GPU
  machine has no spandrel), from the weights in OUTDIR/ARCH.weights.pt (made first if absent). fp16 / bf16:
  the whole model is exported at that dtype (weights and activations; a compiled package ignores autocast),
  input and outputs stay f32 (the expert contract), cast inside the graph; the dtype is in the package's
  srcache metadata. Each package is checked against the eager model at its dtype and timed beside it
  (OUTDIR/ARCH.DTYPE.pt2.json); the parity against the CPU's f32 is srcache's own (`srcache bench parity`).
* --tiny: the same architectures at tiny widths (gpu_archs.TINY), to test the scripts on a CPU in seconds.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
import types
import warnings

import torch
import torch.nn.functional as F

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
    expert = ga.build(arch, seed=a.seed, size=a.size, tiny=a.tiny)
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
    # The exact weights, for the .pt2 exports of the same expert made later in another process (--pt2).
    torch.save(expert.state_dict(), os.path.join(out_dir, f"{arch}.weights.pt"))

    base = torch.nn.functional.interpolate(y, scale_factor=4.0, mode="bicubic", align_corners=False)
    info = {
        "file": f"{arch}.pt",
        "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "params": params,
        "reference_params": ga.RRDB_X4PLUS_PARAMS if arch == "rrdb" else ga.SWINIR_M_X4_PARAMS,
        "tiny": a.tiny,
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
    p.add_argument("--tiny", action="store_true", help="tiny widths (testing the scripts on a CPU)")
    p.add_argument("--pt2", help="comma list of fp32, fp16, bf16: export AOTInductor packages for --device")
    a = p.parse_args(argv)
    if a.size % 8 or a.size <= 8:
        p.error("--size must be a multiple of 8 and larger than 8 (SwinIR window_size 8)")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False")
    os.makedirs(a.outdir, exist_ok=True)
    if a.pt2:
        return make_pt2s(a, device)
    experts = {arch: make(arch, a, a.outdir, device) for arch in (a.arch or ["rrdb", "swinir"])}
    meta = {
        "seed": a.seed,
        "traced_size": a.size,
        "batch": a.batch,
        "torch": torch.__version__,
        "residual_std_target": ga.RESIDUAL_STD,
        "contract": "forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,C,h,w]); "
                    "sr = bicubic_x4(lr) + random-weight net (GPU-check stand-in, see python/tools/gpu_archs.py)",
        "experts": experts,
    }
    with open(os.path.join(a.outdir, "experts.json"), "w") as f:
        json.dump(meta, f, indent=2)


# ------------------------------------------------------------------------------------------ AOTInductor (.pt2)

PT2_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PT2_MAX_SIZE = 4096
# The package vs the eager model at the same dtype (same math, other kernels and fusion): f32 as tight as
# srcache.export's check; half precision only has to be close, its real bar is the f32 parity in srcache.
PT2_TOL = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2e-1}


def _crop(t, h, w):
    """t[:, :, :h, :w] by index_select: no clamped slice end or stride check for torch.export to guard on
    (the reason is in srcache/export.py's _crop)."""
    t = t.index_select(2, torch.arange(h, device=t.device))
    return t.index_select(3, torch.arange(w, device=t.device))


def _coord_mask(self, x_size):
    """SwinIR's shifted-window attention mask from coordinates (srcache/export.py's _make_shift_mask: the same
    values as calculate_mask's slice assignments, which AOTInductor's CPU code generator cannot compile for
    symbolic sizes), made on the block's own device."""
    h, w = x_size
    ws, shift = int(self.window_size), int(self.shift_size)
    dev = self.attn.qkv.weight.device

    def region(n):
        i = torch.arange(n, device=dev)
        return (i >= n - ws).to(torch.int64) + (i >= n - shift).to(torch.int64)

    ids = (region(h).view(h, 1) * 3 + region(w).view(1, w)).to(torch.float32).view(1, h, w, 1)
    mw = ga.window_partition(ids, ws).view(-1, ws * ws)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


class Pt2Expert(torch.nn.Module):
    """The srcache contract around a gpu_archs expert for torch.export: f32 in, the model at `dtype`, reflect
    padding up to the window multiple and an exact crop back inside the graph, f32 out."""

    def __init__(self, expert, multiple, dtype):
        super().__init__()
        self.expert = expert.to(dtype)
        self.multiple, self.dtype = int(multiple), dtype
        for m in self.expert.modules():
            if isinstance(m, ga.SwinTransformerBlock):
                # The size == construction size branch would become a guard on h, w: always compute the mask.
                m.input_resolution = None
                m.calculate_mask = types.MethodType(_coord_mask, m)

    def forward(self, lr):
        h, w = lr.shape[2], lr.shape[3]
        x = lr.to(self.dtype)
        m = self.multiple
        if m > 1:
            x = F.pad(x, (0, (w + m - 1) // m * m - w, 0, (h + m - 1) // m * m - h), mode="reflect")
        sr, feat = self.expert(x)
        if m > 1:
            sr, feat = _crop(sr, 4 * h, 4 * w), _crop(feat, h, w)
        return sr.float(), feat.float()


def _rel_diff(a, b):
    return max(((x.float().cpu() - y.float().cpu()).abs().max() / x.float().abs().max().clamp(min=1.0)).item()
               for x, y in zip(a, b))


def _time(fn, x, reps, dev):
    with torch.no_grad():
        fn(x)
        sync(dev)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)
            sync(dev)
            ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3


def export_pt2(arch, expert, dtype_name, a, device):
    """One package: OUTDIR/ARCH.DTYPE.pt2 (+ .json with the figures). Returns the figures."""
    from torch.export import Dim, export

    dtype = PT2_DTYPES[dtype_name]
    multiple = 8 if arch == "swinir" else 1
    lo = max(multiple, 2)
    wrapper = Pt2Expert(expert, multiple, dtype).eval().to(device)
    feat_c = 180 if arch == "swinir" and not a.tiny else None
    path = os.path.join(a.outdir, f"{arch}.{dtype_name}.pt2")
    x = ga.smooth_images(a.seed + 300, 2 * lo + 1, 2)[:, :, :, : 2 * lo - 1].contiguous().to(device)
    with torch.no_grad():
        feat_c = wrapper(x)[1].shape[1]
    meta = {"version": 1, "format": "pt2", "arch": "RRDBNet" if arch == "rrdb" else "SwinIR", "arch_id": arch,
            "scale": 4, "feat_layer": "feat (gpu_archs)", "feat_channels": int(feat_c), "feat_stride": 1,
            "input_multiple": multiple, "min_size": lo, "max_size": PT2_MAX_SIZE, "sizes": "any",
            "device": device.type, "dtype": dtype_name, "checkpoint": f"{arch}.weights.pt (gpu_archs, seed {a.seed})"}
    t0 = time.perf_counter()
    dyn = {0: Dim.DYNAMIC(min=1, max=1024), 2: Dim.DYNAMIC(min=lo, max=PT2_MAX_SIZE),
           3: Dim.DYNAMIC(min=lo, max=PT2_MAX_SIZE)}
    tmp = os.path.join(a.outdir, f".{arch}.{dtype_name}.partial.pt2")
    with torch.no_grad():
        ep = export(wrapper, (x,), dynamic_shapes=(dyn,))
        t_export = time.perf_counter() - t0
        configs = {"aot_inductor.metadata": {"srcache": json.dumps(meta, sort_keys=True)}}
        if device.type == "cpu":
            # Without it AOTInductor bakes the exporting process's thread count into every CPU kernel (the
            # reason is at srcache/export.py's CPU_CONFIGS).
            configs["cpp.dynamic_threads"] = True
        torch._inductor.aoti_compile_and_package(ep, package_path=tmp, inductor_configs=configs)
        t_compile = time.perf_counter() - t0 - t_export
        loaded = torch._inductor.aoti_load_package(tmp)
        err = 0.0
        for b, hh, ww in [(1, lo, lo), (3, lo + 5, 2 * lo + 7), (a.batch, a.size, a.size)]:
            y = ga.smooth_images(a.seed + 400 + hh, max(hh, ww), b)[:, :, :hh, :ww].contiguous().to(device)
            want, got = wrapper(y), loaded(y)
            if not all(torch.isfinite(t).all() for t in got):
                sys.exit(f"error: {path}: non-finite output at {b}x3x{hh}x{ww}")
            err = max(err, _rel_diff(want, got))
    if err > PT2_TOL[dtype_name]:
        os.remove(tmp)
        sys.exit(f"error: {path}: the package differs from the eager {dtype_name} model by {err:.3e} (> {PT2_TOL[dtype_name]})")
    os.replace(tmp, path)
    y = ga.smooth_images(a.seed + 200, a.size, a.batch).to(device)
    reps = max(a.time_reps, 5)
    info = {"file": os.path.basename(path), "bytes": os.path.getsize(path), "dtype": dtype_name, "device": device.type,
            "export_s": round(t_export, 1), "compile_s": round(t_compile, 1),
            "pt2_vs_eager_rel_max_abs": err,
            # Python-side timing of the same input, batch --batch at --size (ms per batch, median): eager at this
            # dtype beside the package; srcache's own timing of the package is `srcache bench parity --time`.
            "eager_ms": _time(wrapper, y, reps, device), "pt2_python_ms": _time(loaded, y, reps, device),
            "timed": f"{a.batch}x3x{a.size}x{a.size}, median of {reps}"}
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=2)
    print(f"{path}: {dtype_name} {device.type} package, export {t_export:.0f} s + AOTInductor compile {t_compile:.0f} s, "
          f"max rel |pt2 - eager {dtype_name}| {err:.1e}, eager {info['eager_ms']:.1f} ms, pt2 {info['pt2_python_ms']:.1f} ms "
          f"per {info['timed']}", flush=True)
    return info


def make_pt2s(a, device):
    dtypes = [d.strip() for d in a.pt2.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in PT2_DTYPES]
    if bad:
        sys.exit(f"error: --pt2 {a.pt2}: unknown dtype(s) {bad}; use fp32, fp16, bf16")
    if device.type == "cpu" and "fp16" in dtypes:
        sys.exit("error: --pt2 fp16 on the CPU: half-precision convolutions are a CUDA path; use bf16 or fp32 there")
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    for arch in a.arch or ["rrdb", "swinir"]:
        weights = os.path.join(a.outdir, f"{arch}.weights.pt")
        if not os.path.exists(weights):
            make(arch, a, a.outdir, torch.device("cpu"))
        expert = ga.build(arch, seed=a.seed, size=a.size, tiny=a.tiny)
        expert.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        for d in dtypes:
            export_pt2(arch, copy.deepcopy(expert), d, a, device)
    return 0


if __name__ == "__main__":
    main()
