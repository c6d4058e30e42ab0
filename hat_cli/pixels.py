"""The pixel layer: integer images <-> float values in 0..1, with one rounding rule.

Every conversion between stored pixels (uint8, uint16) and the float values networks work on goes
through here, so the upscaler, the tiling engine, batch, bench and train agree to the bit.

Rounding rule: clamp to 0..1, multiply by the peak (255 or 65535), round **half up**
(``2.5 -> 3``). That is MATLAB's ``uint8()`` cast, which made the benchmark LR files and rounds
the SR image in the benchmark recipe (``hat bench``), so ``hat train``'s validation and ``hat
upscale``'s files are exactly what ``hat bench`` scores. NaN becomes 0. Rounding is exact: the
value is rounded half-to-even first and a tie that went down is bumped up (no ``floor(x + 0.5)``,
which misrounds just below one half in float32).

Torch is imported lazily: the CLI and registry use this module without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

PixelType = np.dtype | type[np.generic]


def peak(dtype: PixelType) -> float:
    """The value of white: 65535.0 for uint16, 255.0 for uint8."""
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


def check_pixel_type(dtype: PixelType) -> np.dtype:
    """``dtype`` as a numpy dtype, if it is one this layer stores (uint8, uint16); else ValueError."""
    resolved = np.dtype(dtype)
    if resolved not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {resolved}")
    return resolved


def round_half_up(values: np.ndarray) -> np.ndarray:
    """Round to integers, ties up (``0.5 -> 1``, ``2.5 -> 3``); exact for any float dtype."""
    rounded = np.rint(values)
    return rounded + (values - rounded == 0.5)


def to_levels(values: np.ndarray, dtype: PixelType = np.uint8) -> np.ndarray:
    """Float values already on the ``0..peak`` scale -> integer pixels (clamped, half up, NaN -> 0)."""
    dtype = check_pixel_type(dtype)
    clipped = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, peak(dtype))
    return round_half_up(clipped).astype(dtype)


def quantize_array(values: np.ndarray, dtype: PixelType = np.uint8) -> np.ndarray:
    """Float values in 0..1 (any shape) -> integer pixels of ``dtype``."""
    return to_levels(np.asarray(values, dtype=np.float64) * peak(dtype), dtype)


def to_8bit(array: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels as uint8 (16-bit values rounded by the one rule; 65535 / 255 = 257)."""
    if check_pixel_type(array.dtype) == np.uint8:
        return array
    return to_levels(np.asarray(array) / 257.0, np.uint8)


def grey_to_rgb(array: np.ndarray) -> np.ndarray:
    """H x W or H x W x 1 (grey) -> H x W x 3 with three equal channels; anything else unchanged."""
    if array.ndim == 2:
        array = array[:, :, None]
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def to_unit(array: np.ndarray) -> np.ndarray:
    """Integer pixels -> float32 values in 0..1 (same shape)."""
    dtype = check_pixel_type(array.dtype)
    return np.asarray(array, dtype=np.float32) / np.float32(peak(dtype))


def to_tensor(array: np.ndarray) -> Tensor:
    """H x W x C integer pixels -> (C, H, W) float32 tensor in 0..1 (copies: sources may be read-only)."""
    import torch

    dtype = check_pixel_type(array.dtype)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.array(array, dtype=np.float32)).permute(2, 0, 1)
    return tensor.div_(peak(dtype))


def quantize(block: Tensor, dtype: PixelType = np.uint8) -> np.ndarray:
    """(C, H, W) float tensor in 0..1 (any device) -> H x W x C integer pixels of ``dtype``.

    The rounding runs where the block is; the integers (exact in uint8/int32) cross to the host,
    one byte per value for uint8 output instead of four.
    """
    import torch

    dtype = check_pixel_type(dtype)
    values = block.detach().float().nan_to_num(0.0).clamp_(0.0, 1.0).mul_(peak(dtype))
    rounded = torch.round(values)
    rounded += (values - rounded == 0.5).to(rounded.dtype)
    levels = rounded.to(torch.uint8 if dtype == np.uint8 else torch.int32).permute(1, 2, 0)
    if levels.device.type != "cpu":
        levels = levels.contiguous().cpu()  # one dense copy in the output's layout
    return levels.numpy().astype(dtype, copy=False)


__all__ = [
    "check_pixel_type",
    "grey_to_rgb",
    "peak",
    "quantize",
    "quantize_array",
    "round_half_up",
    "to_8bit",
    "to_levels",
    "to_tensor",
    "to_unit",
]
