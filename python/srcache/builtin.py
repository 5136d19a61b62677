"""The built-in analytic experts (experts/src/builtin.rs) in PyTorch, op for op, so full-image validation in
Python sees the pixels `srcache cache` / `eval` / the Rust trainer see: `builtin:bicubic` (PyTorch bicubic,
a = -0.75), `builtin:lanczos3` (separable Lanczos-3 phases, replicate padding), `builtin:sharp_bicubic`
(bicubic + 0.6 x (bicubic - 5x5 Gaussian blur of it)). Each returns (sr clamped to [0,1], feat): feat is the
fixed filter bank (Sobel x, Sobel y, Laplacian, 3x3 box) over the BT.601 luma at LR size, [B,4,h,w].

    from srcache.builtin import BuiltinExpert
    sr, feat = BuiltinExpert("lanczos3", scale=4)(lr)      # lr [B,3,h,w] float in [0,1]
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BUILTINS", "BuiltinExpert"]

BUILTINS = ("bicubic", "lanczos3", "sharp_bicubic")


def _lanczos(x, a):
    if abs(x) < 1e-12:
        return 1.0
    if abs(x) >= a:
        return 0.0
    px = math.pi * x
    return a * math.sin(px) * math.sin(px / a) / (px * px)


def _lanczos_taps(s):
    """[s*7] f32: output pixel i = j*s + p samples LR coordinate j + (p + 0.5)/s - 0.5, taps at j-3..=j+3
    (weights in f64, normalised, then f32, as Rust)."""
    taps = []
    for p in range(s):
        c = (p + 0.5) / s - 0.5
        w = [_lanczos(c - k, 3.0) for k in range(-3, 4)]
        total = sum(w)  # left-to-right, as Rust's iter().sum()
        taps.extend(v / total for v in w)
    return np.asarray(taps, np.float64).astype(np.float32)


def _gauss():
    g1 = [math.exp(-(k * k) / 2.0) for k in range(-2, 3)]
    gs = sum(g1)
    k = [a * b / (gs * gs) for a in g1 for b in g1]
    return np.asarray(k * 3, np.float64).astype(np.float32)


_FEAT = np.asarray(
    [-1, 0, 1, -2, 0, 2, -1, 0, 1,
     -1, -2, -1, 0, 0, 0, 1, 2, 1,
     0, 1, 0, 1, -4, 1, 0, 1, 0] + [1.0 / 9.0] * 9, np.float64).astype(np.float32)


class BuiltinExpert:
    """One built-in expert at `scale` on `device` (filters built once, as Rust's `Filters`)."""

    def __init__(self, which, scale, device="cpu"):
        if which not in BUILTINS:
            raise ValueError(f"builtin:{which}: unknown built-in expert (known: {', '.join(BUILTINS)})")
        self.which, self.scale, self.device = which, int(scale), torch.device(device)
        s = self.scale
        taps = torch.from_numpy(_lanczos_taps(s))
        self.lanczos_h = taps.reshape(s, 1, 1, 7).to(self.device)
        self.lanczos_v = taps.reshape(s, 1, 7, 1).to(self.device)
        self.gauss = torch.from_numpy(_gauss()).reshape(3, 1, 5, 5).to(self.device)
        self.feat = torch.from_numpy(_FEAT).reshape(4, 1, 3, 3).to(self.device)
        self.coeffs = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).reshape(1, 3, 1, 1).to(self.device)

    def __repr__(self):
        return f"BuiltinExpert({self.which!r}, scale={self.scale})"

    @torch.no_grad()
    def __call__(self, lr):
        b, _, h, w = lr.shape
        s = self.scale
        lr = lr.float()

        def bicubic():
            # Rust passes the scale factors explicitly (upsample_bicubic2d(size, false, s, s)).
            return torch.ops.aten.upsample_bicubic2d(lr, [s * h, s * w], False, float(s), float(s))

        if self.which == "bicubic":
            sr = bicubic()
        elif self.which == "sharp_bicubic":
            up = bicubic()
            blur = F.conv2d(F.pad(up, (2, 2, 2, 2), mode="replicate"), self.gauss, None, 1, 0, 1, 3)
            sr = up + (up - blur) * 0.6
        else:
            x = lr.reshape(b * 3, 1, h, w)
            x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), self.lanczos_h)
            # [N, s, h, w] -> [N, 1, h, w*s]: phase p lands at column j*s + p.
            x = x.permute(0, 2, 3, 1).reshape(b * 3, 1, h, w * s)
            x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), self.lanczos_v)
            sr = x.permute(0, 2, 1, 3).reshape(b, 3, h * s, w * s)
        sr = sr.clamp(0.0, 1.0)
        y = (lr * self.coeffs).sum(1, keepdim=True)
        feat = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), self.feat)
        return sr, feat
