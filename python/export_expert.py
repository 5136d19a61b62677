#!/usr/bin/env python3
"""Export a super-resolution checkpoint to a TorchScript expert for `srcache cache`.

The expert contract: forward(lr: f32[B,3,h,w] in [0,1]) -> (sr f32[B,3,s*h,s*w], feat f32[B,C,h',w']).
The architecture is rebuilt from the state dict with spandrel; feat is captured with a forward hook on the
feature layer (default: the body output before upsampling, `conv_after_body` where the arch has one).

Transformer archs compute attention masks from the input size in Python, so the module is traced at one LR
size (--size, default 64: use the patch size of the cache run). The traced module is verified against the
eager model before it is written.
"""
import argparse
import sys

import warnings

import torch

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", message=".*meshgrid.*")
warnings.filterwarnings("ignore", message=".*zero-element.*")

# Per-arch fallbacks when the requested layer does not exist: the last module of the body.
FEATURE_FALLBACKS = {
    "hat": ["conv_after_body"],
    "dat": ["conv_after_body"],
    "swinir": ["conv_after_body"],
    "esrgan": ["model.1"],  # ShortcutBlock(body + LR conv): the body output before upsampling
    "rrdb": ["model.1"],
    "nafnet": ["middle_blks", "ending"],
}
ARCH_IDS = {"hat": "hat", "dat": "dat", "nafnet": "nafnet", "swinir": "swinir", "rrdb": "esrgan", "esrgan": "esrgan"}


class Expert(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module):
        super().__init__()
        self.model = model
        self._feat = []
        layer.register_forward_hook(lambda _m, _i, out: self._feat.append(out))

    def forward(self, lr):
        self._feat.clear()
        sr = self.model(lr)
        feat = self._feat[-1]
        self._feat.clear()
        if isinstance(feat, (tuple, list)):
            feat = feat[0]
        if feat.dim() == 3:  # token layout [B, L, C] -> cannot know h', w' reliably; reshape by lr size
            b, n, c = feat.shape
            feat = feat.transpose(1, 2).reshape(b, c, lr.shape[2], n // lr.shape[2])
        return sr, feat.float()


def _plain_layernorm2d(self, x):
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / (var + self.eps).sqrt()
    return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def make_traceable(model):
    """Replaces Python autograd Functions (which TorchScript cannot export) by the same math in plain ops."""
    import types

    for m in model.modules():
        if type(m).__name__ == "LayerNorm2d" and hasattr(m, "eps"):
            m.forward = types.MethodType(_plain_layernorm2d, m)


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", default="auto", choices=["auto", "hat", "dat", "nafnet", "swinir", "rrdb", "esrgan"])
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--feature-layer", default="conv_after_body")
    p.add_argument("--size", type=int, default=64, help="LR patch size the module is traced at")
    p.add_argument("--out", required=True)
    p.add_argument("--reference", help="also save input/output of the eager model here (for tests)")
    a = p.parse_args(argv)

    from spandrel import ModelLoader

    try:
        desc = ModelLoader(device="cpu").load_from_state_dict(load_state_dict(a.checkpoint))
    except Exception as e:  # spandrel raises several types for unknown archs
        sys.exit(f"error: {a.checkpoint}: spandrel cannot build a model from this state dict: {e}")
    arch = desc.architecture.id.lower()
    if a.arch != "auto" and ARCH_IDS[a.arch] != arch:
        sys.exit(f"error: {a.checkpoint}: --arch {a.arch} but the state dict is a {desc.architecture.name}")
    if desc.scale != a.scale:
        sys.exit(f"error: {a.checkpoint}: model upscales by {desc.scale}x, --scale is {a.scale}")
    model = desc.model.eval().float()
    make_traceable(model)

    modules = dict(model.named_modules())
    candidates = [a.feature_layer] + FEATURE_FALLBACKS.get(arch, [])
    layer_name = next((n for n in candidates if n in modules), None)
    if layer_name is None:
        sys.exit(f"error: no feature layer among {candidates} in {desc.architecture.name}")
    if layer_name != a.feature_layer:
        print(f"note: {desc.architecture.name} has no {a.feature_layer!r}; using {layer_name!r}", file=sys.stderr)
    expert = Expert(model, modules[layer_name]).eval()

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, a.size, a.size, generator=g)
    with torch.no_grad():
        traced = torch.jit.trace(expert, x, check_trace=False)
        y = torch.rand(2, 3, a.size, a.size, generator=g)
        sr_e, feat_e = expert(y)
        sr_t, feat_t = traced(y)
    if sr_e.shape != (2, 3, a.size * a.scale, a.size * a.scale):
        sys.exit(f"error: sr shape {tuple(sr_e.shape)} is not {a.scale}x the input")
    err = max((sr_e - sr_t).abs().max().item(), (feat_e - feat_t).abs().max().item())
    if err > 1e-4:
        sys.exit(f"error: traced module differs from the eager model by {err}")
    traced.save(a.out)
    if a.reference:
        # A scripted module whose forward() returns (lr, sr, feat): loadable from Rust with tch alone.
        torch.jit.save(torch.jit.script(_Ref(y, sr_e, feat_e)), a.reference)
    print(f"{a.out}: {desc.architecture.name} x{a.scale}, feat {layer_name} {tuple(feat_e.shape[1:])}, "
          f"traced at {a.size}x{a.size}, max |traced - eager| = {err:.2e}")


class _Ref(torch.nn.Module):
    def __init__(self, lr, sr, feat):
        super().__init__()
        self.register_buffer("lr", lr)
        self.register_buffer("sr", sr)
        self.register_buffer("feat", feat)

    def forward(self):
        return self.lr, self.sr, self.feat


if __name__ == "__main__":
    main()
