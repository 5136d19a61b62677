"""Independent references for srcache's ingest maths, used by ingest/tests/fidelity.rs.

resize: MATLAB-style antialiased bicubic by the PyPI package `resize-right` (pad_mode='symmetric'),
        compared with the LR PNG srcache wrote for the same HR image.
metrics: PSNR (numpy) and SSIM (scikit-image, Gaussian σ=1.5, population covariance, data_range=255) on the
        BT.601 Y channel with a border crop, compared by the caller with srcache's numbers.
Prints one JSON object per call.
"""
import json
import sys

import numpy as np
from PIL import Image
from resize_right import interp_methods, resize
from skimage.metrics import structural_similarity


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def y_channel(img):
    img = img.astype(np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def cmd_resize(hr_path, lr_path, scale):
    hr = rgb(hr_path)
    h, w = hr.shape[:2]
    hr = hr[: h - h % scale, : w - w % scale]
    ref = resize(hr.astype(np.float64), scale_factors=[1 / scale, 1 / scale, 1],
                 interp_method=interp_methods.cubic, antialiasing=True, pad_mode="symmetric")
    ref = np.clip(np.round(ref), 0, 255).astype(np.uint8)
    ours = rgb(lr_path)
    if ref.shape != ours.shape:
        return {"shape_ok": False, "ref_shape": ref.shape, "ours_shape": ours.shape}
    diff = np.abs(ref.astype(np.int32) - ours.astype(np.int32))
    return {"shape_ok": True, "equal_fraction": float((diff == 0).mean()), "max_diff": int(diff.max()),
            "pixels": int(diff.size)}


def cmd_metrics(a_path, b_path, crop):
    a, b = y_channel(rgb(a_path)), y_channel(rgb(b_path))
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    mse = np.mean((a - b) ** 2)
    psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
    ssim = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255.0)
    return {"psnr": psnr, "ssim": float(ssim)}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "resize":
        out = cmd_resize(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "metrics":
        out = cmd_metrics(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out))
