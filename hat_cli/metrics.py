"""PSNR and SSIM exactly as the HAT paper (via BasicSR) reports them.

The recipe, all in float64 on the 0..255 scale:

* ``crop_border`` pixels are removed from every edge first (papers use ``crop_border = scale``);
* ``channel='y'``: RGB becomes BT.601 luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``,
  *not* rounded (MATLAB's ``rgb2ycbcr`` on uint8 would round; BasicSR does not);
* PSNR is ``10 log10(255^2 / MSE)``; identical images give ``inf``;
* SSIM is Wang et al.'s with an 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``,
  ``L = 255``, computed only where the window fits ('valid'), averaged over the map; for
  ``channel='rgb'`` it is the mean of the per-channel SSIMs.

Grayscale images (``HxW`` or ``HxWx1``) are used as they are for both channels, like BasicSR's
``to_y_channel``: the gray value is not pushed through the luma formula.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["gaussian_window_1d", "mod_crop", "psnr", "rgb_to_y", "ssim"]

Channel = Literal["y", "rgb"]

# BT.601 "studio swing" luma rows as BasicSR/MATLAB use them, for RGB in 0..255.
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of ``scale`` (``HxW[xC]`` in and out)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def _is_gray(img: np.ndarray) -> bool:
    return img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an ``HxWx3`` RGB image on the 0..255 scale (uint8 or float), as ``HxW`` float64.

    ``HxW`` and ``HxWx1`` (grayscale) come back unchanged as ``HxW`` float64.
    """
    arr = np.asarray(img)
    if _is_gray(arr):
        return arr.reshape(arr.shape[:2]).astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected HxW, HxWx1 or HxWx3, got shape {arr.shape}")
    return arr.astype(np.float64) @ _Y_COEFFS + 16.0


def _prepare(sr: np.ndarray, hr: np.ndarray, crop_border: int, channel: Channel) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, crop borders and pick the channel(s): float64 ``HxW`` or ``HxWxC`` pair."""
    sr = np.asarray(sr)
    hr = np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"image shapes differ: {sr.shape} vs {hr.shape}")
    if channel not in ("y", "rgb"):
        raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        h, w = sr.shape[:2]
        if h <= 2 * crop_border or w <= 2 * crop_border:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
        sr = sr[crop_border:-crop_border, crop_border:-crop_border, ...]
        hr = hr[crop_border:-crop_border, crop_border:-crop_border, ...]
    if channel == "y" or _is_gray(sr):
        return rgb_to_y(sr), rgb_to_y(hr)
    return sr.astype(np.float64), hr.astype(np.float64)


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, channel: Channel = "y") -> float:
    """Peak signal-to-noise ratio in dB of ``sr`` against ``hr`` (same shape, 0..255 scale).

    Returns ``float('inf')`` for identical (cropped, channel-selected) images.
    """
    a, b = _prepare(sr, hr, crop_border, channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian taps (OpenCV's ``getGaussianKernel``); the 2-D window is its outer product."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """'Valid' 2-D filtering of ``HxW`` with the separable window ``outer(taps, taps)``.

    The window is symmetric, so correlation and convolution agree. Output is
    ``(H - k + 1) x (W - k + 1)``.
    """
    k = taps.size
    h, w = img.shape
    rows = sum(taps[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(taps[i] * rows[:, i : w - k + 1 + i] for i in range(k))


def _ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two float64 ``HxW`` images on the 0..255 scale (BasicSR's ``_ssim``)."""
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    taps = gaussian_window_1d(11, 1.5)
    if a.shape[0] < taps.size or a.shape[1] < taps.size:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[0]}x{a.shape[1]}")
    mu_a = _filter_valid(a, taps)
    mu_b = _filter_valid(b, taps)
    mu_a2, mu_b2, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, taps) - mu_a2
    var_b = _filter_valid(b * b, taps) - mu_b2
    cov = _filter_valid(a * b, taps) - mu_ab
    ssim_map = ((2.0 * mu_ab + c1) * (2.0 * cov + c2)) / ((mu_a2 + mu_b2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, channel: Channel = "y") -> float:
    """Structural similarity of ``sr`` against ``hr`` (same shape, 0..255 scale); 1.0 when identical.

    ``channel='rgb'`` averages the SSIM of the three channels.
    """
    a, b = _prepare(sr, hr, crop_border, channel)
    if a.ndim == 2:
        return _ssim_2d(a, b)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c]) for c in range(a.shape[2])]))
