#!/usr/bin/env python3
"""Checks the real pretrained experts made by scripts/real-experts.sh (TorchScript, torch.jit.load only).

Usage: check_real_experts.py OUTDIR

For each expert in OUTDIR/report.json:
  - the conversion report says sr and feat matched the ncnn runtime within its tolerance, and the saved
    module, loaded here, still reproduces ncnn's own output kept in NAME.ncnn_ref.npz (a chelsea.png crop)
    within that tolerance: this is the correctness check, it needs torch only;
  - the module honours the expert contract at two sizes and batch sizes ([2,3,17,23] and [1,3,32,40]):
    sr [B,3,4h,4w], feat [B,C,h,w] with C from the report, all finite;
  - super-resolution of real photos it was not checked on: 128x128 HR crops of astronaut, coffee and rocket,
    LR = bicubic /4 (PIL, 8-bit). PSNR on Y (BT.601, BasicSR's convention, 4-pixel border cropped, 8-bit
    outputs) is printed for the expert and for bicubic x4. These are anime models (x4plus-anime is a GAN):
    on photographs they score below bicubic (measured: animevideov3 -0.3..-0.6 dB, x4plus-anime -3.3..-3.7 dB),
    so beating bicubic is not required. The assertion is a coarse floor, at most 6 dB below bicubic, which
    catches gross breakage (random RRDB weights: -15..-22 dB; inputs fed as 0..255: -6..-18 dB) but not
    subtle weight errors: PSNR on photos barely moves for those, the ncnn reference above catches them.
Prints "skipped: <why>" when OUTDIR has no report, and a closing "N passed, N failed" line.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PHOTOS = os.path.join(HERE, "..", "..", "tests", "data", "photos")
HELD_OUT = ["astronaut.png", "coffee.png", "rocket.png"]  # convert_ncnn.py checks on chelsea.png
HR = 128
MAX_BELOW_BICUBIC = 6.0


def y_channel(rgb_u8: np.ndarray) -> np.ndarray:
    x = rgb_u8.astype(np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def psnr_y(a_u8: np.ndarray, b_u8: np.ndarray, border: int) -> float:
    a, b = y_channel(a_u8), y_channel(b_u8)
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = np.mean((a - b) ** 2)
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def held_out_pairs(scale: int):
    from PIL import Image

    for name in HELD_OUT:
        im = Image.open(os.path.join(PHOTOS, name)).convert("RGB")
        w, h = im.size
        left, top = (w - HR) // 2, (h - HR) // 2
        hr = im.crop((left, top, left + HR, top + HR))
        lr = hr.resize((HR // scale, HR // scale), Image.BICUBIC)
        bic = lr.resize((HR, HR), Image.BICUBIC)
        yield name, np.asarray(hr), np.asarray(lr), np.asarray(bic)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    report_path = os.path.join(out, "report.json")
    if not os.path.isfile(report_path):
        print(f"skipped: no {report_path} (run scripts/real-experts.sh {out})")
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    report = json.load(open(report_path))
    passed, failed = 0, 0

    def check(ok: bool, what: str):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} {what}")

    g = torch.Generator().manual_seed(0)
    for name, m in report["models"].items():
        tol = report["tolerance"]
        check(m["sr_max_abs_diff_vs_ncnn"] <= tol and m["feat_max_abs_diff_vs_ncnn"] <= tol,
              f"{name}: conversion matched ncnn (sr {m['sr_max_abs_diff_vs_ncnn']:.2e}, "
              f"feat {m['feat_max_abs_diff_vs_ncnn']:.2e}, tolerance {tol:g})")
        expert = torch.jit.load(os.path.join(out, m["file"]), map_location="cpu").eval()
        s, c = m["scale"], m["feat_channels"]
        with torch.no_grad():
            ref = np.load(os.path.join(out, m["ncnn_reference"]))
            sr, feat = expert(torch.from_numpy(ref["lr"])[None])
            d_sr = float(np.abs(sr[0].numpy() - ref["sr"]).max())
            d_feat = float(np.abs(feat[0].numpy() - ref["feat"]).max())
            check(d_sr <= tol and d_feat <= tol,
                  f"{name}: saved module vs ncnn's own output on a {list(ref['lr'].shape[1:])} photo crop: "
                  f"max |sr diff| {d_sr:.2e}, max |feat diff| {d_feat:.2e}")
            for b, h, w in [(2, 17, 23), (1, 32, 40)]:
                sr, feat = expert(torch.rand(b, 3, h, w, generator=g))
                ok = (tuple(sr.shape) == (b, 3, s * h, s * w) and tuple(feat.shape) == (b, c, h, w)
                      and sr.dtype == feat.dtype == torch.float32
                      and bool(torch.isfinite(sr).all()) and bool(torch.isfinite(feat).all()))
                check(ok, f"{name}: lr [{b},3,{h},{w}] -> sr {list(sr.shape)}, feat {list(feat.shape)}")

            for photo, hr, lr, bic in held_out_pairs(s):  # figures to read; a coarse floor only
                x = torch.from_numpy(lr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
                sr, _ = expert(x)
                sr_u8 = (sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
                p_sr, p_bic = psnr_y(sr_u8, hr, s), psnr_y(bic, hr, s)
                check(p_sr >= p_bic - MAX_BELOW_BICUBIC,
                      f"{name}: {photo} {HR}x{HR} from {HR // s}x{HR // s}: PSNR-Y {p_sr:.2f} dB, "
                      f"bicubic {p_bic:.2f} dB ({p_sr - p_bic:+.2f})")
    print(f"check_real_experts: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
