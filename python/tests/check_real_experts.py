#!/usr/bin/env python3
"""Checks the real pretrained experts made by scripts/real-experts.sh (TorchScript, torch.jit.load only).

Usage: check_real_experts.py OUTDIR

For each expert in OUTDIR/report.json (SPAN x4 ch48/ch52, SRMD-NF x4, Real-ESRGAN animevideov3 and x4plus-anime):
  - the conversion report says sr and feat matched the ncnn runtime within its tolerance, and the saved
    module, loaded here, still reproduces ncnn's own output kept in NAME.ncnn_ref.npz (a chelsea.png crop)
    within that tolerance: this is the correctness check, it needs torch only;
  - the module honours the expert contract at two sizes and batch sizes ([2,3,17,23] and [1,3,32,40]):
    sr [B,3,4h,4w], feat [B,C,h,w] with C from the report, all finite;
  - super-resolution of real photos: 128x128 HR centre crops of astronaut, coffee and rocket, LR = MATLAB
    bicubic /4 and the baseline MATLAB bicubic x4 (srcache.fullimage, bit-exact with the Rust ingest), Y-PSNR
    with crop = scale on u8 images (srcache.metrics). A PSNR-oriented model (report "psnr_model") must beat
    bicubic by >= 1.5 dB on the mean of the crops (measured: span48 +2.57, span52 +2.65, srmdnf +2.19) and
    its whole-photo figure in the report must clear the report's bar; the anime/GAN models score below
    bicubic on photographs (animevideov3 -0.35..-0.65 dB, x4plus-anime -3.2..-3.7 dB), so for them the
    assertion is a coarse floor, at most 6 dB below bicubic, which catches gross breakage (random weights,
    inputs fed as 0..255) but not subtle weight errors: the ncnn reference above catches those.
Prints "skipped: <why>" when OUTDIR has no report, and a closing "N passed, N failed" line.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from srcache.fullimage import imresize, load_rgb8  # noqa: E402
from srcache.metrics import psnr_y, to_rgb8  # noqa: E402

ROOT = os.path.join(HERE, "..", "..")
# the built-in photos: the ingest crate's own assets
PHOTOS = os.path.join(ROOT, "ingest", "assets", "photos")
CROP_PHOTOS = ["astronaut.png", "coffee.png", "rocket.png"]  # the ncnn reference crops come from chelsea.png
HR = 128
PSNR_MIN_GAIN = 1.5
MAX_BELOW_BICUBIC = 6.0


def crop_pairs(scale: int):
    for name in CROP_PHOTOS:
        im = load_rgb8(os.path.join(PHOTOS, name))
        h, w = im.shape[:2]
        top, left = (h - HR) // 2, (w - HR) // 2
        hr = im[top:top + HR, left:left + HR]
        lr = imresize(hr, HR // scale, HR // scale)
        yield name, hr, lr, imresize(lr, HR, HR)


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

            gains = []
            for photo, hr, lr, bic in crop_pairs(s):
                sr, _ = expert(torch.from_numpy(lr.astype(np.float32) / 255.0).permute(2, 0, 1)[None])
                p_sr, p_bic = psnr_y(to_rgb8(sr[0]), hr, s), psnr_y(bic, hr, s)
                gains.append(p_sr - p_bic)
                line = (f"{name}: {photo} {HR}x{HR} from {HR // s}x{HR // s}: PSNR-Y {p_sr:.2f} dB, "
                        f"MATLAB bicubic {p_bic:.2f} dB ({p_sr - p_bic:+.2f})")
                if m.get("psnr_model"):
                    print(f"     {line}")
                else:
                    check(p_sr >= p_bic - MAX_BELOW_BICUBIC, line)
            if m.get("psnr_model"):
                mean = float(np.mean(gains))
                check(mean >= PSNR_MIN_GAIN, f"{name}: PSNR model beats MATLAB bicubic by {mean:+.2f} dB on the "
                      f"mean of the crops (want >= {PSNR_MIN_GAIN})")
                whole, bar = m.get("mean_gain_over_bicubic_db"), report.get("min_gain_db", PSNR_MIN_GAIN)
                check(whole is not None and whole >= bar,
                      f"{name}: whole photos at conversion: {m.get('mean_psnr_y')} dB vs bicubic "
                      f"{m.get('mean_bicubic_psnr_y')} dB ({whole:+.3f}, bar {bar})" if whole is not None
                      else f"{name}: the report has no whole-photo PSNR")
    print(f"check_real_experts: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
