"""PSNR/SSIM/Y-channel checks against values worked out by hand or from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hat_cli.metrics import gaussian_window_1d, mod_crop, psnr, rgb_to_y, ssim


def _smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 ``hxwx3`` image with structure (SSIM of noise alone is uninformative)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    img = base[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ Y channel


@pytest.mark.parametrize(
    ("rgb", "y"),
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),  # 16 + 65.481 + 128.553 + 24.966
        ((255, 0, 0), 16.0 + 65.481),
        ((0, 255, 0), 16.0 + 128.553),
        ((0, 0, 255), 16.0 + 24.966),
        ((10, 20, 30), 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255.0),
    ],
)
def test_rgb_to_y_known_pixels(rgb: tuple[int, int, int], y: float) -> None:
    img = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    out = rgb_to_y(img)
    assert out.shape == (1, 1)
    assert out.dtype == np.float64
    assert out[0, 0] == pytest.approx(y, abs=1e-12)


def test_rgb_to_y_is_not_rounded_and_accepts_float() -> None:
    img = np.array([[[1, 2, 3]]], dtype=np.uint8)
    y = rgb_to_y(img)[0, 0]
    assert y != round(y)  # 17.5... : BasicSR keeps the fraction, MATLAB's uint8 rgb2ycbcr would not
    assert rgb_to_y(img.astype(np.float32))[0, 0] == pytest.approx(y, abs=1e-5)


def test_gray_is_used_as_is() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(rgb_to_y(gray), gray.astype(np.float64))
    np.testing.assert_array_equal(rgb_to_y(gray[..., None]), gray.astype(np.float64))


def test_rgb_to_y_rejects_two_channels() -> None:
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((2, 2, 2), np.uint8))


# ------------------------------------------------------------------ PSNR


def test_psnr_known_mse_gray() -> None:
    hr = np.full((10, 10), 100, np.uint8)
    sr = hr.copy()
    sr[3, 4] = 110  # one error of 10 over 100 pixels: MSE = 1
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255), abs=1e-12)  # 48.1308 dB


def test_psnr_known_mse_rgb_and_y() -> None:
    hr = np.full((8, 8, 3), 50, np.uint8)
    sr = hr + np.uint8(5)
    # RGB: every value off by 5 -> MSE 25.
    assert psnr(sr, hr, channel="rgb") == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    # Y: a grey shift of 5 moves Y by 5 * 219/255.
    dy = 5 * 219 / 255
    assert psnr(sr, hr, channel="y") == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)


def test_psnr_identical_is_inf() -> None:
    img = _smooth_rgb(16, 16)
    assert psnr(img, img.copy(), crop_border=2) == float("inf")
    assert psnr(img, img.copy(), channel="rgb") == float("inf")


def test_psnr_crop_border_removes_edge_errors() -> None:
    hr = _smooth_rgb(20, 20)
    sr = hr.copy()
    sr[:3] = 0
    sr[:, -3:] = 255
    assert math.isfinite(psnr(sr, hr, crop_border=2))
    assert psnr(sr, hr, crop_border=3) == float("inf")


def test_psnr_is_float64_not_uint8_arithmetic() -> None:
    # uint8 subtraction would wrap 0 - 255 to 1; the true MSE is 255^2 -> 0 dB.
    hr = np.full((4, 4), 255, np.uint8)
    sr = np.zeros((4, 4), np.uint8)
    assert psnr(sr, hr) == pytest.approx(0.0, abs=1e-12)


def test_psnr_shape_mismatch_and_bad_arguments() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        psnr(a, a[:7])
    with pytest.raises(ValueError):
        psnr(a, a, channel="ycbcr")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        psnr(a, a, crop_border=4)  # nothing left


# ------------------------------------------------------------------ SSIM


def test_gaussian_window() -> None:
    g = gaussian_window_1d(11, 1.5)
    assert g.shape == (11,)
    assert g.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(g, g[::-1])
    assert g[6] / g[5] == pytest.approx(math.exp(-1 / (2 * 1.5**2)))


def test_ssim_identical_is_one() -> None:
    img = _smooth_rgb(24, 30)
    assert ssim(img, img.copy(), crop_border=3) == 1.0
    assert ssim(img, img.copy(), channel="rgb") == 1.0


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # No variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 255)^2.
    a, b = 100.0, 110.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    got = ssim(np.full((15, 15), 110, np.uint8), np.full((15, 15), 100, np.uint8))
    assert got == pytest.approx(expected, abs=1e-12)  # 0.995477


def _ssim_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM straight from the formula: an 11x11 Gaussian-weighted window at every valid position."""
    g = gaussian_window_1d(11, 1.5)
    win = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (win * px).sum(), (win * py).sum()
            vx = (win * (px - mx) ** 2).sum()
            vy = (win * (py - my) ** 2).sum()
            cxy = (win * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_definition_on_valid_windows() -> None:
    hr = _smooth_rgb(17, 19, seed=1)
    sr = _smooth_rgb(17, 19, seed=2)
    want = _ssim_by_definition(rgb_to_y(sr), rgb_to_y(hr))
    assert ssim(sr, hr) == pytest.approx(want, abs=1e-10)
    assert 0.0 < want < 1.0
    # With a 2-pixel crop: 13x15 left, a 3x5 map.
    want_cropped = _ssim_by_definition(rgb_to_y(sr)[2:-2, 2:-2], rgb_to_y(hr)[2:-2, 2:-2])
    assert ssim(sr, hr, crop_border=2) == pytest.approx(want_cropped, abs=1e-10)


def test_ssim_rgb_is_the_channel_mean() -> None:
    hr = _smooth_rgb(20, 20, seed=3)
    sr = hr.copy()
    sr[..., 0] = _smooth_rgb(20, 20, seed=4)[..., 0]  # only red differs
    red = ssim(sr[..., 0], hr[..., 0])
    assert red < 0.99
    assert ssim(sr, hr, channel="rgb") == pytest.approx((red + 1.0 + 1.0) / 3.0, abs=1e-12)


def test_ssim_needs_a_full_window() -> None:
    with pytest.raises(ValueError):
        ssim(np.zeros((12, 12), np.uint8), np.zeros((12, 12), np.uint8), crop_border=1)


# ------------------------------------------------------------------ mod_crop


def test_mod_crop() -> None:
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    out = mod_crop(img, 3)
    assert out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, img[:6, :9])  # bottom/right are dropped
    assert mod_crop(img[..., 0], 4).shape == (4, 8)
    assert mod_crop(img, 1).shape == img.shape
    with pytest.raises(ValueError):
        mod_crop(img, 0)
