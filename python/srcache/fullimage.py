"""Full-image validation as the Rust trainer runs it (trainer/src/validate.rs `FullImageVal`), so the template
reports the numbers `srcache train` and `srcache eval` report:

- benchmark folders (experts/src/benchmark.rs): `DIR/HR/*` (or `DIR/*` without `HR/`), searched recursively,
  paired with `DIR/LR_bicubic/X<s>/<stem>x<s>.*` (or `<stem>.*`) when that folder exists, else the LR is made
  with MATLAB bicubic (ingest/src/resize.rs, ported here to the bit: f64 weights cast to f32, f32 sums in the
  same tap order, round half up then clip); HR mod-cropped to the scale;
- the experts named by the cache's schema attrs `expert/<name>` (`builtin:*` -> srcache.builtin, a file ->
  torch.jit.load), run once per image in tiles with overlap blending (experts/src/tiling.rs), tile = the
  cache's patch size by default, overlap 16; features projected on the cache's PCA basis when the model takes
  coefficients;
- at each validation only the fusion model runs (whole image); rows fused, each expert, `matlab_bicubic`,
  Y-PSNR/SSIM with crop = scale on u8-rounded images (srcache.metrics).

    val = FullImageVal.prepare(["bench/Set5"], cache_dataset, net, tile=0, overlap=16)
    tables = val.evaluate(net)                    # [{"source", "samples", "rows": [{name, psnr, ssim}]}]
"""
import os
from pathlib import Path

import numpy as np
import torch

from .builtin import BuiltinExpert
from .fusion import upsample_bicubic
from .metrics import psnr_y, ssim_y, to_rgb8

__all__ = ["imresize", "bicubic_lr", "bicubic_up", "mod_crop", "scan_folder", "load_rgb8", "starts",
           "run_tiled_multi", "load_expert", "FullImageVal", "MATLAB_BICUBIC"]

MATLAB_BICUBIC = "matlab_bicubic"
EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")


# ---- MATLAB imresize (ingest/src/resize.rs) ---------------------------------------------------------------
def _cubic(x):
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return np.where(ax <= 1.0, 1.5 * ax3 - 2.5 * ax2 + 1.0,
                    np.where(ax <= 2.0, -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0, 0.0))


def contributions(in_len, out_len, scale, antialias=True):
    """MATLAB `contributions`: (index [out, taps] 0-based mirrored, weight [out, taps] f32)."""
    aa = scale < 1.0 and antialias
    kw = 4.0 / scale if aa else 4.0
    taps = int(np.ceil(kw)) + 2
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kw / 2.0).astype(np.int64)
    j = left[:, None] + np.arange(taps)[None, :]
    d = u[:, None] - j.astype(np.float64)
    w = scale * _cubic(d * scale) if aa else _cubic(d)
    total = np.zeros(out_len)
    for k in range(taps):  # left to right, as Rust's iter().sum()
        total = total + w[:, k]
    weight = (w / total[:, None]).astype(np.float32)
    n = in_len
    while True:
        lo, hi = j < 1, j > n
        if not (lo.any() or hi.any()):
            break
        j = np.where(lo, 1 - j, np.where(hi, 2 * n + 1 - j, j))
    return j - 1, weight


def _pass(src, axis, index, weight):
    """One separable pass along `axis` (0 rows, 1 columns) of an HWC f32 image: f32 products summed over
    the taps in order (no FMA), as Rust."""
    out = None
    for k in range(index.shape[1]):
        wk = weight[:, k]
        if axis == 0:
            term = wk[:, None, None] * src[index[:, k]]
        else:
            term = wk[None, :, None] * src[:, index[:, k]]
        out = term if out is None else out + term
    return out


def _to_u8(v):
    """Round half up then clip (Rust `to_u8`): exact on f32."""
    v = np.nan_to_num(v, nan=0.0)
    t = np.floor(np.clip(v, 0.0, 255.0))
    r = t + ((v - t) >= 0.5)
    return np.clip(np.where(v > 0.0, r, 0.0), 0, 255).astype(np.uint8)


def imresize(img, out_w, out_h):
    """MATLAB bicubic resize of an HWC uint8 image (antialiased when shrinking, u8 rounding)."""
    src = np.asarray(img)
    h, w = src.shape[:2]
    if h == 0 or w == 0 or out_h == 0 or out_w == 0:
        return np.zeros((out_h, out_w, 3), np.uint8)
    sy, sx = out_h / h, out_w / w
    ri, rw = contributions(h, out_h, sy)
    ci, cw = contributions(w, out_w, sx)
    x = src.astype(np.float32)
    if sy <= sx:
        x = _pass(_pass(x, 0, ri, rw), 1, ci, cw)
    else:
        x = _pass(_pass(x, 1, ci, cw), 0, ri, rw)
    return _to_u8(x)


def mod_crop(img, scale):
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_lr(hr, scale):
    """(HR mod-cropped to `scale`, its LR by MATLAB `imresize(hr, 1/scale, 'bicubic')`)."""
    hr = mod_crop(hr, scale)
    return hr, imresize(hr, hr.shape[1] // scale, hr.shape[0] // scale)


def bicubic_up(lr, scale):
    """MATLAB bicubic upscaling: the `matlab_bicubic` row."""
    return imresize(lr, lr.shape[1] * scale, lr.shape[0] * scale)


# ---- benchmark folders (experts/src/benchmark.rs, ingest scan) --------------------------------------------
def _images(d):
    found = []
    for root, dirs, files in os.walk(d, followlinks=True):
        dirs.sort()
        found += [Path(root) / f for f in files if f.rsplit(".", 1)[-1].lower() in EXTENSIONS and "." in f]
    return sorted(found)


def scan_folder(d, scale, max_images=0):
    """[(stem, hr_path, lr_path or None)] by path order, first file of each stem; HR without an LR partner
    (when the LR folder exists) are returned in `skipped` with the reason."""
    d = Path(d)
    if not d.is_dir():
        raise ValueError(f"{d}: not a directory (a benchmark folder holds HR/*.png)")
    hr_dir = d / "HR" if (d / "HR").is_dir() else d
    lr_dir = d / "LR_bicubic" / f"X{scale}"
    files = _images(hr_dir)
    if not files:
        raise ValueError(f"{hr_dir}: no images (a benchmark folder holds HR/*.png)")
    lr_by_stem = {}
    if lr_dir.is_dir():
        for p in _images(lr_dir):
            lr_by_stem.setdefault(p.stem, p)
    seen, entries, skipped = set(), [], []
    for p in files:
        if p.stem in seen:
            skipped.append((p, "same stem as an earlier image"))
            continue
        seen.add(p.stem)
        lr = None
        if lr_dir.is_dir():
            lr = lr_by_stem.get(f"{p.stem}x{scale}") or lr_by_stem.get(p.stem)
            if lr is None:
                skipped.append((p, f"no LR partner in {lr_dir}"))
                continue
        entries.append((p.stem, p, lr))
    if max_images > 0:
        entries = entries[:max_images]
    return entries, skipped


def load_rgb8(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_pair(hr_path, lr_path, scale):
    """(HR mod-cropped, LR) as Rust `prepare_image`: a given LR must be exactly HR/scale."""
    hr = load_rgb8(hr_path)
    if hr.shape[0] < scale or hr.shape[1] < scale:
        raise ValueError(f"{hr_path}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
    if lr_path is None:
        return bicubic_lr(hr, scale)
    hr = mod_crop(hr, scale)
    lr = load_rgb8(lr_path)
    want = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != want:
        raise ValueError(f"{lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}, expected {want[1]}x{want[0]} "
                         f"(HR {hr_path} mod-cropped, /{scale})")
    return hr, lr


# ---- tiled inference (experts/src/tiling.rs) --------------------------------------------------------------
def starts(length, tile, overlap):
    if length <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    v, i = [], 0
    while i * stride + tile < length:
        v.append(i * stride)
        i += 1
    if not v or v[-1] != length - tile:
        v.append(length - tile)
    return v


def _ramp(n, r, lo, hi):
    i = np.arange(n, dtype=np.float32)
    w = np.ones(n, np.float32)
    if lo:
        w = np.where(i < r, np.minimum(w, (i + np.float32(0.5)) / np.float32(r)), w)
    if hi:
        rev = np.float32(n - 1) - i
        w = np.where(rev < r, np.minimum(w, (rev + np.float32(0.5)) / np.float32(r)), w)
    return torch.from_numpy(w.astype(np.float32))


def run_tiled_multi(lr, tile, overlap, f):
    """`f` (tile [1,C,h,w] -> list of [1,C_k,h*r_k,w*r_k]) over `lr` [1,C,H,W], blended on the CPU in f32."""
    _, _, h, w = lr.shape
    tile = max(tile, 8)
    overlap = min(max(overlap, 0), tile // 2)
    ys, xs = starts(h, tile, overlap), starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    outs = []
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            res = f(lr[:, :, y : y + th, x : x + tw])
            for k, o in enumerate(res):
                o = o.to("cpu", torch.float32)
                _, c, oh, ow = o.shape
                if len(outs) <= k:
                    if (oh * tw != ow * th) or any((v * oh) % th for v in (h, w, *ys, *xs)):
                        raise ValueError(f"output {k} is {oh}x{ow} for a {th}x{tw} tile: the tiles cannot be placed "
                                         f"(image {h}x{w}, tile {tile}, overlap {overlap})")
                    outs.append([oh, th, torch.zeros(1, c, h * oh // th, w * oh // th), torch.zeros(1, 1, h * oh // th, w * oh // th)])
                num, den, acc, wsum = outs[k]
                g = np.gcd(num, den)
                num, den = num // g, den // g
                r = overlap * num // den
                wt = _ramp(oh, r, iy > 0, iy + 1 < len(ys)).view(1, 1, oh, 1) * _ramp(ow, r, ix > 0, ix + 1 < len(xs)).view(1, 1, 1, ow)
                oy, ox = y * num // den, x * num // den
                acc[:, :, oy : oy + oh, ox : ox + ow] += o * wt
                wsum[:, :, oy : oy + oh, ox : ox + ow] += wt
    return [acc / wsum for _, _, acc, wsum in outs]


# ---- experts ----------------------------------------------------------------------------------------------
class _ScriptExpert:
    def __init__(self, name, path, device):
        self.name, self.path = name, path
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:  # noqa: BLE001 - the message names the file and torch's reason
            raise ValueError(f"expert {name}: {path}: cannot load as TorchScript ({type(e).__name__}: {e})") from e
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, lr):
        out = self.module(lr.to(self.device))
        sr, feat = (out[0], out[1] if len(out) > 1 else None) if isinstance(out, (tuple, list)) else (out, None)
        if not torch.is_tensor(sr) or not sr.is_floating_point():
            raise ValueError(f"expert {self.name} ({self.path}): sr must be a float tensor")
        if not torch.isfinite(sr).all() or (feat is not None and not torch.isfinite(feat).all()):
            raise ValueError(f"expert {self.name} ({self.path}): returned NaN or infinite values")
        return sr.float().clamp(0.0, 1.0), (feat.float() if feat is not None else None)


def _resolve(p, data_dir):
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    for d in (Path(data_dir), Path(data_dir).parent):
        if (d / p).exists():
            return d / p
    return p


def load_expert(name, source, scale, data_dir, device="cpu"):
    """An expert from its schema source: `builtin:<kind>` or a TorchScript file (relative to the cache)."""
    if source.startswith("builtin:"):
        return BuiltinExpert(source[len("builtin:"):], scale, device)
    path = _resolve(source, data_dir)
    if not path.is_file():
        raise ValueError(f"expert {name}: {path}: no such model file (schema attr expert/{name} = {source!r})")
    if path.suffix == ".pt2":
        raise ValueError(f"expert {name}: {path}: an AOTInductor package; full-image validation here runs TorchScript "
                         "(.pt) and built-in experts only: validate with `srcache train` (val_dirs) or `srcache eval`")
    return _ScriptExpert(name, path, device)


def _project(feat, basis):
    k, c = basis.k, basis.channels
    w = torch.from_numpy(np.asarray(basis.components, np.float32)).reshape(k, c)
    mean = torch.from_numpy(np.asarray(basis.mean, np.float32)).reshape(c, 1)
    bias = (-(w @ mean)).reshape(k)
    return torch.nn.functional.conv2d(feat, w.reshape(k, c, 1, 1), bias)


def _score(sr8, hr8, scale):
    return psnr_y(sr8, hr8, scale), ssim_y(sr8, hr8, scale)


class FullImageVal:
    """The full-image validation set: experts run once (`prepare`), the fusion model at every `evaluate`."""

    def __init__(self, dirs, experts, skipped, notes):
        self.dirs, self.experts, self.skipped, self.notes = dirs, experts, skipped, notes

    @classmethod
    @torch.no_grad()
    def prepare(cls, val_dirs, data, net, tile=0, overlap=16, max_images=0, device="cpu"):
        """`data`: the CacheDataset the model trains on (its schema names the experts and patch size)."""
        attrs = (data.schema or {}).get("attrs", {})
        scale = net.scale
        patch = int(attrs["patch"]) if str(attrs.get("patch", "")).isdigit() else None
        tile = tile if tile > 0 else (patch or 64)
        if tile >= 2**31 - 1:
            tile, overlap = 2**31 - 1, 0
        experts = []
        for name in net.experts:
            src = attrs.get(f"expert/{name}")
            if src is None:
                raise ValueError(f"{data.root}: schema has no expert/{name} attribute: the experts' sources are "
                                 "recorded by `srcache cache`")
            experts.append(load_expert(name, src, scale, data.root, device))
        want = list(net.cfg.wants_feat())
        pca = [data.pca(e) if (wf and not getattr(net, "pca_folded", False)) else None for e, wf in zip(net.experts, want)]
        dirs, skipped, notes = [], [], []
        for d in val_dirs:
            entries, skip = scan_folder(d, scale, max_images)
            skipped += skip
            images = []
            for stem, hr_path, lr_path in entries:
                try:
                    hr, lr8 = load_pair(hr_path, lr_path, scale)
                except (OSError, ValueError) as e:
                    skipped.append((hr_path, str(e)))
                    continue
                lr = torch.from_numpy(np.array(lr8, np.uint8)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
                srs, feats = [], []
                for i, ex in enumerate(experts):
                    wf = want[i]

                    def f(t, ex=ex, wf=wf):
                        sr, feat = ex(t.to(device))
                        if wf and feat is None:
                            raise ValueError(f"expert {net.experts[i]}: the fusion model expects its features, but it returns none")
                        return [sr, feat] if wf else [sr]

                    parts = run_tiled_multi(lr, tile, overlap, f)
                    srs.append(parts[0].clamp(0.0, 1.0))
                    if wf:
                        feats.append(_project(parts[1], pca[i]) if pca[i] is not None else parts[1])
                fixed = [_score(to_rgb8(s[0]), hr, scale) for s in srs] + [_score(bicubic_up(lr8, scale), hr, scale)]
                images.append({"name": stem, "hr": hr, "lr": lr, "srs": srs, "feats": feats, "fixed": fixed})
            if not images:
                why = "".join(f"; {p}: {r}" for p, r in [x for x in skipped if str(x[0]).startswith(str(d))][:3])
                raise ValueError(f"{d}: no validation images (HR/ + LR_bicubic/X{scale}/){why}")
            name = Path(d).resolve().name or str(d)
            dirs.append({"name": name, "images": images})
        return cls(dirs, list(net.experts), skipped, notes)

    def images(self):
        return sum(len(d["images"]) for d in self.dirs)

    @torch.no_grad()
    def evaluate(self, net, device="cpu"):
        if list(net.experts) != self.experts:
            raise ValueError(f"full-image validation: model fuses {net.experts}, the set was prepared for {self.experts}")
        was = net.training
        net.eval()
        tables = []
        for d in self.dirs:
            acc = [[0.0, 0.0] for _ in range(len(self.experts) + 2)]
            for img in d["images"]:
                lr = img["lr"].to(device)
                fused = net.fuse(upsample_bicubic(lr, net.scale), [s.to(device) for s in img["srs"]],
                                 [f.to(device) for f in img["feats"]])
                for a, v in zip(acc, [_score(to_rgb8(fused[0]), img["hr"], net.scale), *img["fixed"]]):
                    a[0] += v[0]
                    a[1] += v[1]
            n = len(d["images"])
            names = ["fused", *self.experts, MATLAB_BICUBIC]
            tables.append({"source": d["name"], "samples": n,
                           "rows": [{"name": m, "psnr": p / n, "ssim": q / n} for m, (p, q) in zip(names, acc)]})
        net.train(was)
        return tables
