#!/usr/bin/env python3
"""Tiny random-weight spandrel models for the experts-v2 tests (issue 20), built with spandrel's own
architecture classes at small widths, saved as state dicts: OUT_DIR/<arch>.pth.

Usage: make_v2_experts.py OUT_DIR [arch ...]   (archs: compact swinir hat dat rrdb; default all)

Also writes OUT_DIR/<arch>.ref.pt: a scripted module whose forward() returns (lr, sr, feat) with lr two seeded
75x112 images (32x32 for DAT, whose trace keeps its size), sr the output of spandrel's own eager model (its own
padding, not the exporter's) and feat the exporter's hooked feature map in eager mode: what an exported expert
must reproduce.
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from srcache import export as E  # noqa: E402

SIZE = 16
REF_SIZE = {"dat": (32, 32)}


def tiny(arch):
    if arch == "compact":
        from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

        return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    if arch == "swinir":
        from spandrel.architectures.SwinIR import SwinIR

        return SwinIR(img_size=SIZE, embed_dim=12, depths=[2], num_heads=[2], window_size=4, mlp_ratio=2.0,
                      upscale=2, upsampler="pixelshuffle")
    if arch == "hat":
        from spandrel.architectures.HAT import HAT

        return HAT(img_size=SIZE, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, compress_ratio=3,
                   squeeze_factor=4, mlp_ratio=2.0, upscale=2, num_feat=8)
    if arch == "dat":
        from spandrel.architectures.DAT import DAT

        return DAT(img_size=SIZE, embed_dim=16, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2.0,
                   upscale=2)
    if arch == "rrdb":
        from spandrel.architectures.ESRGAN import ESRGAN

        return ESRGAN(num_filters=8, num_blocks=1, scale=2)
    raise SystemExit(f"unknown arch {arch}")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for arch in sys.argv[2:] or ["compact", "swinir", "hat", "dat", "rrdb"]:
        torch.manual_seed(0)
        model = tiny(arch)
        # Random init leaves some archs near-constant; a seeded perturbation of every parameter keeps outputs
        # input-dependent, which is what a numerical comparison needs.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ckpt = os.path.join(out, f"{arch}.pth")
        torch.save(model.state_dict(), ckpt)
        from spandrel import ModelLoader

        sd = E.load_state_dict(ckpt)
        raw = ModelLoader(device="cpu").load_from_state_dict(sd).model.eval()
        expert, _ = E.build(E.load_state_dict(ckpt))
        h, w = REF_SIZE.get(arch, (75, 112))
        lr = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            sr = raw(lr)
            sr_w, feat = expert(lr)
        assert (sr - sr_w).abs().max().item() <= 1e-5, f"{arch}: exporter wrapper differs from spandrel's model"
        torch.jit.save(torch.jit.script(E._Ref(lr, sr, feat)), os.path.join(out, f"{arch}.ref.pt"))
        print(f"{arch}: {ckpt}, reference {h}x{w}")


if __name__ == "__main__":
    main()
