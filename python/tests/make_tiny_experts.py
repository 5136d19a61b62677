#!/usr/bin/env python3
"""Builds tiny random-weight HAT, DAT, NAFNet, SwinIR and RRDB models with spandrel's own architecture
classes, saves their state dicts and exports each with export_expert.py (plus a reference output).

Usage: make_tiny_experts.py OUT_DIR [arch ...]   -> OUT_DIR/<arch>.pth, <arch>.pt, <arch>.ref.pt
"""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 16


def tiny(arch):
    if arch == "hat":
        from spandrel.architectures.HAT import HAT

        return 2, HAT(img_size=SIZE, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, compress_ratio=3,
                      squeeze_factor=4, mlp_ratio=2.0, upscale=2, num_feat=8)
    if arch == "dat":
        from spandrel.architectures.DAT import DAT

        return 2, DAT(img_size=SIZE, embed_dim=16, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2.0,
                      upscale=2)
    if arch == "nafnet":
        from spandrel.architectures.NAFNet import NAFNet

        return 1, NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    if arch == "swinir":
        from spandrel.architectures.SwinIR import SwinIR

        return 2, SwinIR(img_size=SIZE, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2.0,
                         upscale=2, upsampler="pixelshuffle")
    if arch == "rrdb":
        from spandrel.architectures.ESRGAN import ESRGAN

        return 2, ESRGAN(num_filters=8, num_blocks=1, scale=2)
    raise SystemExit(f"unknown arch {arch}")


def main():
    out = sys.argv[1]
    archs = sys.argv[2:] or ["rrdb", "swinir", "hat", "dat", "nafnet"]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for arch in archs:
        scale, model = tiny(arch)
        ckpt = os.path.join(out, f"{arch}.pth")
        torch.save(model.state_dict(), ckpt)
        cmd = [sys.executable, os.path.join(HERE, "..", "export_expert.py"), "--checkpoint", ckpt, "--arch", arch,
               "--scale", str(scale), "--size", str(SIZE), "--out", os.path.join(out, f"{arch}.pt"),
               "--reference", os.path.join(out, f"{arch}.ref.pt")]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
