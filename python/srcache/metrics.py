"""PSNR and SSIM as the Rust trainer and `srcache eval` report them (ingest/src/metrics.rs, BasicSR's
`calculate_psnr` / `calculate_ssim` with `test_y_channel=True`): images rounded to u8 first (clamp to [0,1],
x 255, round half away from zero, as `tensor_to_rgb8`), Y of BT.601 on 0..255 values (16 + (65.481 R +
128.553 G + 24.966 B) / 255) in float64, `crop` pixels removed at every border (crop = scale), SSIM with an
11x11 Gaussian window (sigma 1.5) over the valid region only.

    from srcache.metrics import psnr_y, ssim_y, to_rgb8
    psnr_y(to_rgb8(sr), to_rgb8(hr), crop=scale)     # sr, hr: [3,H,W] float tensors or arrays in [0,1]
"""
import numpy as np

__all__ = ["to_rgb8", "y_plane", "psnr_y", "ssim_y", "psnr_plane", "ssim_plane"]


def to_rgb8(x):
    """[3,H,W] float image in [0,1] (torch tensor or numpy) -> HWC uint8, clamped and rounded like Rust's
    `tensor_to_rgb8` (torch.round: half to even, on x * 255 in float32)."""
    if hasattr(x, "detach"):
        import torch

        t = x.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
        return t.permute(1, 2, 0).contiguous().numpy()
    a = np.asarray(x, np.float32)
    return np.round(np.clip(a, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0).copy()


def y_plane(img, crop):
    """Y (float64, 16..235) of an HWC uint8 image with `crop` pixels cut from every border."""
    a = np.asarray(img).astype(np.float64)
    h, w = a.shape[:2]
    a = a[crop : max(h - crop, crop), crop : max(w - crop, crop)]
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def psnr_plane(a, b):
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0 * 255.0 / mse)


def psnr_y(a, b, crop):
    """Y-channel PSNR in dB of two HWC uint8 images (infinite when identical)."""
    return psnr_plane(y_plane(a, crop), y_plane(b, crop))


def _gauss11():
    d = np.arange(11, dtype=np.float64) - 5.0
    k = np.exp(-d * d / (2.0 * 1.5 * 1.5))
    return k / k.sum()


def _filter_valid(x, k):
    h, w = x.shape
    tmp = sum(k[i] * x[:, i : w - 10 + i] for i in range(11))
    return sum(k[i] * tmp[i : h - 10 + i, :] for i in range(11))


def ssim_plane(a, b):
    """SSIM of two Y planes of 0..255 values (BasicSR `_ssim`); NaN when smaller than 11x11."""
    if a.shape[0] < 11 or a.shape[1] < 11 or a.shape != b.shape:
        return float("nan")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    k = _gauss11()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    s11 = _filter_valid(a * a, k) - mu1 * mu1
    s22 = _filter_valid(b * b, k) - mu2 * mu2
    s12 = _filter_valid(a * b, k) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


def ssim_y(a, b, crop):
    """Y-channel SSIM of two HWC uint8 images."""
    return ssim_plane(y_plane(a, crop), y_plane(b, crop))
