"""Export a super-resolution checkpoint to an srcache expert: `python -m srcache.export`.

The expert contract: forward(lr: f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,s*h,s*w], feat f32[B,C,h,w]), or sr
alone with --no-feat. The architecture is rebuilt from the state dict with spandrel; feat is captured with a
forward hook on the feature layer (the body output before upsampling: found from the architecture for the
known ones, else --feature-layer NAME; the error lists the candidates).

Formats (picked by --format, else by the extension of --out):
- `pt2` (.pt2): torch.export with dynamic batch, height and width, compiled by AOTInductor into a package
  srcache loads through libtorch's AOTIModelPackageLoader. Padding to the architecture's window or multiple is
  inside the graph (reflect pad up, crop sr and feat back exactly), so any LR size >= the minimum works.
  AOTInductor compiles C++ here: an export takes 1-3 minutes on 2 cores for a small model.
- `torchscript` (.pt/.ts): torch.jit.trace at one LR size (--size). A CNN then runs at any size; transformer
  archs compute attention masks from the size in Python and run only at the traced size: the exporter checks
  which is the case and records it.

Both carry metadata srcache reads without running the model (JSON: `srcache.json` extra file of the
TorchScript archive, the `srcache` key of the AOTInductor package's metadata): format, scale, arch, feature
layer and channels, input multiple, minimum size, traced size and accepted sizes, sha256 of the checkpoint.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import types
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=".*meshgrid.*")
warnings.filterwarnings("ignore", message=".*zero-element.*")

META_VERSION = 1
# Feature layers of the known architectures (spandrel arch id, lower case): the body output before upsampling.
FEATURE_LAYERS = {
    "hat": ["conv_after_body"],
    "dat": ["conv_after_body"],
    "swinir": ["conv_after_body"],
    "swin2sr": ["conv_after_body"],
    "drct": ["conv_after_body"],
    "atd": ["conv_after_body"],
    "esrgan": ["model.1"],  # ShortcutBlock(body + LR conv): the body output before upsampling
    "nafnet": ["middle_blks", "ending"],
}
ARCH_IDS = {"hat": "hat", "dat": "dat", "nafnet": "nafnet", "swinir": "swinir", "rrdb": "esrgan", "esrgan": "esrgan",
            "compact": "compact"}


class ExportError(Exception):
    pass


def _compact_feature_layer(model):
    """SRVGGNetCompact: body = conv, act, (conv, act) * num_conv, conv(-> 3 * s^2): the last activation."""
    return f"body.{len(model.body) - 2}"


def default_feature_layer(arch, model):
    modules = dict(model.named_modules())
    if arch == "compact" and hasattr(model, "body"):
        return _compact_feature_layer(model)
    return next((n for n in FEATURE_LAYERS.get(arch, []) if n in modules), None)


def feature_candidates(model, size):
    """Modules whose output is a [B, C>3, size, size] map for a size x size input: usable feature layers."""
    found, hooks = [], []
    for name, m in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2:] == (size, size) and t.shape[1] > 3:
                found.append((name, int(t.shape[1])))

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    seen, out = set(), []
    for name, c in found:
        if name not in seen:
            seen.add(name)
            out.append((name, c))
    return out


def _window_size(model):
    ws = getattr(model, "window_size", None)
    if isinstance(ws, (tuple, list)):
        ws = math.lcm(*[int(v) for v in ws])
    return int(ws) if isinstance(ws, int) and ws > 0 else 1


def input_multiple(desc, model):
    """The LR multiple the model needs: spandrel's size requirement and the attention window."""
    m = max(1, int(desc.size_requirements.multiple_of))
    m = math.lcm(m, _window_size(model))
    split = getattr(model, "split_size", None)  # DAT: rectangular windows of split_size
    if isinstance(split, (tuple, list)) and split:
        m = math.lcm(m, *[int(v) for v in split])
    return m


def _safe_window_reverse(windows, window_size, h, w):
    # The architectures' own version derives the batch with int(float), which a dynamic-shape export cannot keep
    # symbolic; the same value by integer division.
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _safe_windows2img(img_splits_hw, h_sp, w_sp, h, w):
    # DAT's rectangular-window reverse, batch by integer division (see _safe_window_reverse).
    b = img_splits_hw.shape[0] // ((h // h_sp) * (w // w_sp))
    img = img_splits_hw.view(b, h // h_sp, w // w_sp, h_sp, w_sp, -1)
    return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _make_shift_mask(window_partition):
    """The shifted-window attention mask of SwinIR / HAT (`calculate_mask`), computed from coordinates instead of
    by assigning region ids into slices of a zero image: the same values, but pointwise ops that AOTInductor's
    CPU code generator compiles (its vectorised masked slice-scatter does not build for these shapes)."""

    def calculate_mask(self, x_size, dtype=None):
        h, w = x_size
        ws, shift = int(self.window_size), int(self.shift_size)

        def region(n):
            i = torch.arange(n)
            return (i >= n - ws).to(torch.int64) + (i >= n - shift).to(torch.int64)

        ids = region(h).view(h, 1) * 3 + region(w).view(1, w)
        img_mask = ids.to(dtype or torch.float32).view(1, h, w, 1)
        mask_windows = window_partition(img_mask, ws).view(-1, ws * ws)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)

    return calculate_mask


def make_exportable(model):
    """Rewrites the few Python-level shape tricks of spandrel's archs that tracing/export cannot keep general."""
    for m in model.modules():
        if type(m).__name__ == "LayerNorm2d" and hasattr(m, "eps"):
            m.forward = types.MethodType(_plain_layernorm2d, m)
        # SwinIR blocks reuse a mask buffer when the input size equals the construction size: a shape-dependent
        # branch; computing the mask always is the same math at every size.
        if type(m).__name__ == "SwinTransformerBlock" and hasattr(m, "calculate_mask") and hasattr(m, "input_resolution"):
            m.input_resolution = None
        if type(m).__name__ in ("SwinTransformerBlock", "HAT") and hasattr(m, "calculate_mask") and hasattr(m, "shift_size"):
            partition = getattr(sys.modules.get(type(m).__module__), "window_partition", None)
            if partition is not None:
                m.calculate_mask = types.MethodType(_make_shift_mask(partition), m)
    mod = sys.modules.get(type(model).__module__)
    if mod is not None and hasattr(mod, "window_reverse"):
        import inspect

        params = list(inspect.signature(mod.window_reverse).parameters)
        if len(params) == 4:
            mod.window_reverse = _safe_window_reverse


def _plain_layernorm2d(self, x):
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + self.eps).sqrt()
    return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


class Expert(torch.nn.Module):
    """The srcache contract around a spandrel model: reflect-pads h, w up to `multiple`, runs the model, crops
    sr (and an LR-resolution feat) back to the input's size."""

    def __init__(self, model, layer, multiple, scale):
        super().__init__()
        self.model = model
        self.multiple = int(multiple)
        self.scale = int(scale)
        self._feat = []
        # LR pixels per feature-map pixel (NAFNet's middle blocks run at a fraction of the input's size).
        self.feat_stride = 1
        self.has_feat = layer is not None
        if layer is not None:
            layer.register_forward_hook(lambda _m, _i, out: self._feat.append(out))

    def forward(self, lr):
        h, w = lr.shape[2], lr.shape[3]
        m = self.multiple
        x = lr
        if m > 1:
            hp = (h + m - 1) // m * m
            wp = (w + m - 1) // m * m
            x = F.pad(lr, (0, wp - w, 0, hp - h), mode="reflect")
        hp, wp = x.shape[2], x.shape[3]
        self._feat.clear()
        sr = self.model(x)
        if m > 1:
            sr = _crop(sr, h * self.scale, w * self.scale)
        if not self.has_feat:
            self._feat.clear()
            return sr
        feat = self._feat[-1]
        self._feat.clear()
        if isinstance(feat, (tuple, list)):
            feat = feat[0]
        if feat.dim() == 3:  # token layout [B, L, C] at the padded LR size
            b, n, c = feat.shape
            feat = feat.transpose(1, 2).reshape(b, c, hp, wp)
        if m > 1:
            k = self.feat_stride
            feat = _crop(feat, h, w) if k == 1 else _crop(feat, (h + k - 1) // k, (w + k - 1) // k)
        return sr, feat.float()


def _crop(t, h, w):
    """t[:, :, :h, :w] as a new tensor. Not slicing: a slice's end is clamped to the size, and a view's
    strides get contiguity checks, both branches torch.export would guard on (padded or not), baking one case
    into the graph; index_select has no branch and its only condition (the crop fits) holds at every size."""
    t = t.index_select(2, torch.arange(h, device=t.device))
    return t.index_select(3, torch.arange(w, device=t.device))


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(state_dict, arch_wanted="auto", scale=None, feature_layer=None, no_feat=False, source="state dict"):
    """spandrel model -> (Expert wrapper, metadata dict without format-specific fields)."""
    from spandrel import ModelLoader

    try:
        desc = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except Exception as e:  # spandrel raises several types for unknown archs
        raise ExportError(f"{source}: spandrel cannot build a model from this state dict: {e}") from e
    arch = desc.architecture.id.lower()
    if arch_wanted != "auto" and ARCH_IDS.get(arch_wanted, arch_wanted) != arch:
        raise ExportError(f"{source}: --arch {arch_wanted} but the state dict is a {desc.architecture.name}")
    if scale is not None and desc.scale != scale:
        raise ExportError(f"{source}: model upscales by {desc.scale}x, --scale is {scale}")
    model = desc.model.eval().float()
    multiple = input_multiple(desc, model)
    minimum = max(int(desc.size_requirements.minimum), multiple, 2)
    make_exportable(model)
    modules = dict(model.named_modules())
    layer_name = None
    if not no_feat:
        layer_name = feature_layer or default_feature_layer(arch, model)
        if layer_name is None or layer_name not in modules:
            probe = max(minimum, 2 * multiple)
            cands = feature_candidates(Expert(model, None, multiple, desc.scale).model, probe)
            listed = ", ".join(f"{n} ({c} ch)" for n, c in cands) or "none found"
            what = f"no layer {layer_name!r}" if layer_name else "no known feature layer"
            raise ExportError(
                f"{source}: {desc.architecture.name}: {what}; layers whose output is an LR-resolution feature map: "
                f"{listed}. Pick one with --feature-layer NAME, or export an sr-only expert with --no-feat")
    expert = Expert(model, modules[layer_name] if layer_name else None, multiple, desc.scale).eval()
    feat_channels = 0
    if layer_name:
        # The hooked layer's own output at a size the model takes unpadded: its channels and stride.
        p = -(-max(minimum, 2 * multiple) // multiple) * multiple
        with torch.no_grad():
            raw = expert(torch.rand(1, 3, p, p))[1]
        if raw.dim() != 4 or raw.shape[2] != raw.shape[3] or p % raw.shape[2]:
            raise ExportError(f"{source}: feature layer {layer_name!r} gives {tuple(raw.shape)} for a {p}x{p} input, not a "
                              f"feature map [B,C,h,w] of it; pick another with --feature-layer, or --no-feat")
        expert.feat_stride = p // int(raw.shape[2])
        feat_channels = int(raw.shape[1])
    probe = max(minimum, 2 * multiple) + 1
    with torch.no_grad():
        out = expert(torch.rand(1, 3, probe, probe))
    sr = out[0] if layer_name else out
    if tuple(sr.shape) != (1, 3, probe * desc.scale, probe * desc.scale):
        raise ExportError(f"{source}: sr shape {tuple(sr.shape)} is not {desc.scale}x the {probe}x{probe} input")
    meta = {
        "version": META_VERSION,
        "arch": desc.architecture.name,
        "arch_id": arch,
        "scale": int(desc.scale),
        "feat_layer": layer_name or "",
        "feat_channels": feat_channels,
        "feat_stride": expert.feat_stride,
        "input_multiple": multiple,
        "min_size": minimum,
    }
    return expert, meta


def _example(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b):
    """Max |a - b| over the outputs, relative to their range when that exceeds 1 (trained SR outputs are in
    [0,1]; a random-weight deep model's can be far larger, and f32 reordering error grows with them)."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    return max(((x.float().cpu() - y.float().cpu()).abs().max() / x.float().abs().max().clamp(min=1.0)).item()
               for x, y in zip(a, b))


# Inductor settings for CPU packages. cpp.dynamic_threads: by default AOTInductor writes the exporting process's
# thread count into every generated CPU kernel (`#pragma omp parallel num_threads(N)`, N = torch's threads at
# export), whatever the process that runs the package asks for; a package exported on a 2-core machine and run
# with 1 thread then has two OpenMP threads spin in a barrier after each of its many small kernels (measured:
# ~60% of the run time in libgomp for a SwinIR, 4x slower than eager; BENCHMARKS.md). With it the kernels use
# the run-time OpenMP thread count (torch.set_num_threads / OMP_NUM_THREADS), like eager and TorchScript.
CPU_CONFIGS = {"cpp.dynamic_threads": True}


def _dat_batch_patch(expert):
    """DAT's windows2img derives the batch with int(float), which torch.export specialises to the example's
    batch: (module, original) after swapping in the integer-division version, or None. Only for the package
    export (restored after it): the same swap also makes a DAT TorchScript trace size-generic, which would change
    what existing DAT traces and the tests of the traced-only refusal rely on; left for a separate change."""
    import inspect

    mod = sys.modules.get(type(getattr(expert, "model", expert)).__module__)
    f = getattr(mod, "windows2img", None) if mod is not None else None
    if f is None or len(inspect.signature(f).parameters) != 5:
        return None
    mod.windows2img = _safe_windows2img
    return mod, f


def export_pt2(expert, meta, out, device="cpu", max_size=4096):
    patched = _dat_batch_patch(expert)
    try:
        return _export_pt2(expert, meta, out, device, max_size)
    finally:
        if patched:
            patched[0].windows2img = patched[1]


def _export_pt2(expert, meta, out, device, max_size):
    from torch.export import Dim, export

    lo = meta["min_size"]
    dev = torch.device(device)
    expert = expert.to(dev)
    # Dim.DYNAMIC rather than named Dims: the padding arithmetic gives guards sympy cannot prove but that hold
    # for every size (the reflect pad is smaller than the input, ...); named Dims refuse those, DYNAMIC keeps
    # them as runtime checks. A guard that would cut the range (specialise) still fails the export, and the
    # package is checked against eager at sizes on and off the multiple below.
    batch = Dim.DYNAMIC(min=1, max=1024)
    h = Dim.DYNAMIC(min=lo, max=max_size)
    w = Dim.DYNAMIC(min=lo, max=max_size)
    # Example sizes off the multiple, so nothing specialises to a padded or unpadded path.
    eh, ew = 2 * lo + 1, 2 * lo + 3
    x = _example(2, eh, ew).to(dev)
    with torch.no_grad():
        ep = export(expert, (x,), dynamic_shapes=({0: batch, 2: h, 3: w},))
        meta = dict(meta, format="pt2", device=dev.type, sizes="any", max_size=max_size)
        configs = {"aot_inductor.metadata": {"srcache": json.dumps(meta, sort_keys=True)}}
        if dev.type == "cpu":
            configs.update(CPU_CONFIGS)
        # Written beside the target and renamed once checked, so no half-written package is ever at `out`
        # (AOTInductor insists on a .pt2 suffix).
        tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.partial.pt2")
        torch._inductor.aoti_compile_and_package(ep, package_path=tmp, inductor_configs=configs)
        loaded = torch._inductor.aoti_load_package(tmp)
        err = 0.0
        for b, hh, ww in [(1, lo, lo), (3, lo + 5, 2 * lo + 7), (1, 4 * lo, 4 * lo + 2)]:
            y = _example(b, hh, ww, seed=1).to(dev)
            err = max(err, _max_diff(expert(y), loaded(y)))
    if err > 1e-4:
        os.remove(tmp)
        raise ExportError(f"{out}: the AOTInductor package differs from the eager model by {err:.3e}")
    os.replace(tmp, out)
    return meta, err


def export_torchscript(expert, meta, out, size):
    m = meta["input_multiple"]
    if size < meta["min_size"] or size % m:
        raise ExportError(f"--size {size}: this {meta['arch']} needs a multiple of {m} >= {meta['min_size']}")
    x = _example(2, size, size)
    with torch.no_grad():
        traced = torch.jit.trace(expert, x, check_trace=False)
        y = _example(2, size, size, seed=1)
        err = _max_diff(expert(y), traced(y))
        if err > 1e-4:
            raise ExportError(f"traced module differs from the eager model by {err:.3e}")
        # A CNN's trace is size-generic; a transformer's bakes its traced size into masks and reshapes.
        # Checked at an odd size off the multiple, which also exercises the in-graph padding.
        z = _example(1, size + 2 * m + 1, size + m + 2, seed=2)
        try:
            generic = _max_diff(expert(z), traced(z)) <= 1e-4
        except Exception:
            generic = False
    meta = dict(meta, format="torchscript", traced_size=size, sizes="any" if generic else "traced")
    tmp = out + ".tmp"
    torch.jit.save(traced, tmp, _extra_files={"srcache.json": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, out)
    return meta, err, y


def read_metadata(path):
    """The srcache metadata of an exported expert (either format), without running it."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith("/extra/srcache.json"):
                return json.loads(z.read(name))
        for name in z.namelist():
            if name.endswith("_metadata.json") and "/data/aotinductor/" in name:
                md = json.loads(z.read(name))
                if "srcache" in md:
                    return json.loads(md["srcache"])
    raise ExportError(f"{path}: no srcache metadata (exported by an older exporter?)")


class _Ref(torch.nn.Module):
    def __init__(self, lr, sr, feat):
        super().__init__()
        self.register_buffer("lr", lr)
        self.register_buffer("sr", sr)
        self.register_buffer("feat", feat)

    def forward(self):
        return self.lr, self.sr, self.feat


def save_reference(expert, path, size_hw, meta):
    """A scripted module whose forward() returns (lr, sr, feat) of the eager model: loadable from Rust with tch."""
    h, w = size_hw
    y = _example(2, h, w, seed=3)
    with torch.no_grad():
        out = expert.cpu()(y)
    sr, feat = (out if meta["feat_layer"] else (out, torch.zeros(1)))
    torch.jit.save(torch.jit.script(_Ref(y, sr, feat)), path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m srcache.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="state dict (.pth, .pt, .safetensors); required unless --show-metadata")
    p.add_argument("--arch", default="auto", help="expected architecture (auto, hat, dat, swinir, rrdb, compact, ...)")
    p.add_argument("--scale", type=int, help="expected scale (checked against the model)")
    p.add_argument("--feature-layer", help="module whose output is the feature map (default: from the architecture)")
    p.add_argument("--no-feat", action="store_true", help="export an sr-only expert")
    p.add_argument("--format", choices=["pt2", "torchscript"], help="default: from --out (.pt2 -> pt2, else torchscript)")
    p.add_argument("--device", default="cpu", help="pt2: compile for this device (cpu, cuda)")
    p.add_argument("--size", type=int, default=64, help="torchscript: LR size the module is traced at")
    p.add_argument("--max-size", type=int, default=4096, help="pt2: largest LR side the package accepts")
    p.add_argument("--out", required=True)
    p.add_argument("--reference", help="also save input/output of the eager model here (for tests)")
    p.add_argument("--reference-size", default=None, help="HxW of the reference input (default: --size square)")
    p.add_argument("--show-metadata", action="store_true", help="print the metadata of --out and exit")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        if a.show_metadata:
            print(json.dumps(read_metadata(a.out), indent=2, sort_keys=True))
            return 0
        if not a.checkpoint:
            raise ExportError("--checkpoint is required")
        fmt = a.format or ("pt2" if a.out.endswith(".pt2") else "torchscript")
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            raise ExportError(f"--device {a.device}: torch sees no CUDA device here")
        if fmt == "torchscript" and a.device != "cpu":
            raise ExportError("--device: TorchScript experts are exported on the CPU (srcache moves them)")
        sd = load_state_dict(a.checkpoint)
        expert, meta = build(sd, a.arch, a.scale, a.feature_layer, a.no_feat, source=a.checkpoint)
        meta["checkpoint"] = os.path.basename(a.checkpoint)
        meta["checkpoint_sha256"] = sha256_file(a.checkpoint)
        if fmt == "pt2":
            meta, err = export_pt2(expert, meta, a.out, a.device, a.max_size)
            sizes = f"any LR size {meta['min_size']}..{meta['max_size']} (padded to a multiple of {meta['input_multiple']} inside)"
        else:
            meta, err, _ = export_torchscript(expert, meta, a.out, a.size)
            sizes = (f"traced at {a.size}x{a.size}, runs at any size" if meta["sizes"] == "any"
                     else f"traced at {a.size}x{a.size}: runs at that size only")
        if a.reference:
            rs = a.reference_size or f"{a.size}x{a.size}"
            h, w = (int(v) for v in rs.lower().split("x"))
            save_reference(expert, a.reference, (h, w), meta)
        feat = f"feat {meta['feat_layer']} ({meta['feat_channels']} ch)" if meta["feat_layer"] else "no feat"
        print(f"{a.out}: {fmt} {meta['arch']} x{meta['scale']}, {feat}, {sizes}, max |export - eager| = {err:.2e}")
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
