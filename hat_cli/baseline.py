"""The bicubic baseline of super-resolution papers, and how benchmark inputs are made.

MATLAB's ``imresize(..., 'bicubic')`` on uint8 (:mod:`hat_cli.imresize`): :func:`make_lr` shrinks
ground truth into the benchmark LR images (bit-identical to the published Set5 and BSD100 files),
:func:`bicubic_upscale` is the ``bicubic`` row of every results table, and
:class:`BicubicUpscaler` offers it through the upscaler contract, so ``hat upscale --model
bicubic`` and ``hat bench --model bicubic`` write exactly that image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, InputImageError
from .imresize import imresize
from .metrics import mod_crop
from .pixels import check_pixel_type, peak, round_half_up, to_levels
from .upscaling import Progress, UpscalerBase

if TYPE_CHECKING:
    import torch

Model = Callable[[np.ndarray], np.ndarray]


def check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """Benchmark input from ground truth: MATLAB ``imresize(modcrop(hr, s), 1/s, 'bicubic')``.

    ``HxW[x3]`` uint8 in, ``(H//s)x(W//s)[x3]`` uint8 out; bit-identical to the published Set5
    (RCAN ``LRBI``) and BSD100 (SelfExSR) files.
    """
    check_scale(scale)
    cropped = mod_crop(hr, scale)
    h, w = cropped.shape[:2]
    if h == 0 or w == 0:
        raise InputImageError(f"a {hr.shape[0]}x{hr.shape[1]} image is smaller than the scale {scale}")
    small = imresize(cropped, 1.0 / scale, output_shape=(h // scale, w // scale), round_between_passes=True)
    return to_levels(small)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The ``bicubic`` baseline: MATLAB ``imresize(lr, s, 'bicubic')`` on uint8.

    ``hxw[x3]`` uint8 in, ``(h*s)x(w*s)[x3]`` uint8 out.
    """
    check_scale(scale)
    h, w = lr.shape[:2]
    big = imresize(lr, float(scale), output_shape=(h * scale, w * scale), round_between_passes=True)
    return to_levels(big)


def bicubic_model(scale: int) -> Model:
    """:func:`bicubic_upscale` at a fixed scale, in the model shape :func:`run_bench` takes."""
    check_scale(scale)
    return functools.partial(bicubic_upscale, scale=scale)


class BicubicUpscaler(UpscalerBase):
    """The ``bicubic`` baseline through the upscaler contract.

    What ``open_upscaler(model="bicubic", scale=s)`` returns, so ``hat upscale --model bicubic``
    writes the exact image papers compare against (:func:`bicubic_upscale`). 8-bit images take
    MATLAB's uint8 path (rounding between the passes); 16-bit and float images are resized in
    float64 and rounded once.
    """

    name = "bicubic"

    def __init__(self, scale: int) -> None:
        check_scale(scale)
        self._scale = int(scale)

    @property
    def scale(self) -> int:
        return self._scale

    def upscale_array(self, array: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        array = np.asarray(array)
        dtype = check_pixel_type(array.dtype)
        if dtype == np.uint8:
            return bicubic_upscale(array, self.scale)
        return to_levels(imresize(array, float(self.scale)), dtype)

    def upscale_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(B, C, H, W) float in 0..1 -> (B, C, sH, sW) float32; 8-bit content takes the uint8 path."""
        import torch  # the caller holds a tensor, so torch is loaded; not at import time (CLI start)

        white = peak(np.uint8)
        images = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy() * white
        levels = round_half_up(images)
        if np.abs(images - levels).max(initial=0.0) < 1e-4:  # 8-bit content: the exact uint8 path
            out = np.stack([bicubic_upscale(image.astype(np.uint8), self.scale) for image in levels]) / white
        else:
            out = np.stack([imresize(image, self.scale) for image in images]) / white
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(torch.float32).to(x.device)


__all__ = ["BicubicUpscaler", "Model", "bicubic_model", "bicubic_upscale", "check_scale", "make_lr"]
