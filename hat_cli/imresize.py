"""MATLAB-compatible bicubic ``imresize`` in NumPy.

Super-resolution papers make their low-resolution inputs (and their ``bicubic`` baseline) with
MATLAB's ``imresize(img, scale, 'bicubic')``. Other resizers (Pillow, OpenCV, torch) differ in the
kernel, the antialiasing or the border rule and move PSNR by tenths of a dB, so benchmarks need the
MATLAB arithmetic itself:

* cubic convolution kernel with ``a = -0.5`` (Keys), support 4 input pixels;
* when shrinking (``scale < 1``) the kernel is stretched by ``1/scale`` and its height scaled by
  ``scale`` - this is MATLAB's antialiasing, on by default for bicubic;
* output pixel ``x`` (1-based) samples input coordinate ``u = x/scale + 0.5*(1 - 1/scale)``, so pixel
  edges (not centres) line up;
* out-of-range taps are folded back inside: ``border='replicate'`` clamps them to the edge pixel
  (what the MATLAB that made the standard benchmark files did: RCAN's Set5 ``LRBI`` and SelfExSR's
  BSD100 x4 inputs are reproduced bit for bit), ``border='symmetric'`` mirrors them with the edge
  pixel repeated (the rule in other MATLAB releases and in BasicSR's Python port). The two differ only in the
  outermost output pixels (the first one or two rows/columns when shrinking by 2..4) and never inside
  the ``scale``-pixel border that PSNR/SSIM crop when enlarging;
* each output pixel's weights are normalised to sum to 1;
* separable: one pass per axis, the axis with the smaller scale (the larger reduction) first, rows
  first on a tie - MATLAB's ``sort(scale)`` order.

Each pass gathers the few input lines every output line needs (MATLAB's weights/indices tables) and
sums them with NumPy, so whole images resize in milliseconds; :func:`resize_matrix` gives the same
pass as a dense ``(out, in)`` matrix. Everything here works in float64; :func:`to_uint8` rounds like
MATLAB's uint8 cast.

MATLAB on a *uint8* image also rounds to uint8 between the two passes (its resize kernel returns the
input's class); ``round_between_passes=True`` reproduces that. Without it about one pixel in ten of
those benchmark files comes out one level off.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .pixels import to_levels

__all__ = ["Border", "contributions", "cubic", "imresize", "resize_matrix", "to_uint8"]

Border = Literal["replicate", "symmetric"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``), evaluated elementwise."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def contributions(
    in_len: int, out_len: int, scale: float, antialiasing: bool = True, border: Border = "replicate"
) -> tuple[np.ndarray, np.ndarray]:
    """Taps of one resize pass, MATLAB's ``contributions``: ``(weights, indices)``, both ``(out_len, taps)``.

    Output pixel ``i`` is ``sum_k weights[i, k] * input[indices[i, k]]``; ``indices`` are 0-based and
    already folded back inside ``0..in_len-1``. Taps that are zero for every output are dropped.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"lengths must be positive, got in_len={in_len}, out_len={out_len}")
    if border not in ("replicate", "symmetric"):
        raise ValueError(f"border must be 'replicate' or 'symmetric', got {border!r}")
    kernel_width = 4.0
    if scale < 1.0 and antialiasing:
        kernel_width /= scale

        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)

    else:
        kernel = cubic

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    # One spare tap each side, as MATLAB: all-zero tap columns are removed below.
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input positions
    weights = kernel(u[:, None] - idx)
    weights /= weights.sum(axis=1, keepdims=True)

    pos = idx.astype(np.int64) - 1  # 0-based
    if border == "replicate":
        indices = np.clip(pos, 0, in_len - 1)
    else:
        # Positions 1..n, n..1, 1..n, ... (period 2n): 0 -> 1, -1 -> 2, n+1 -> n.
        mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
        indices = mirror[np.mod(pos, 2 * in_len)]

    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], indices[:, keep]


def resize_matrix(
    in_len: int, out_len: int, scale: float, antialiasing: bool = True, border: Border = "replicate"
) -> np.ndarray:
    """The same pass as a dense ``(out_len, in_len)`` matrix: ``matrix @ signal`` resizes a 1-D signal.

    Handy for inspection and tests; :func:`imresize` applies the sparse taps instead (20x fewer
    multiplications at x4).
    """
    weights, indices = contributions(in_len, out_len, scale, antialiasing, border)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], indices.shape)
    # Near a border several taps fold onto the same pixel: accumulate, don't overwrite.
    np.add.at(matrix, (rows, indices), weights)
    return matrix


def _resize_axis(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One pass along ``axis``: a weighted sum of gathered input lines, tap by tap."""
    # Resized axis first and contiguous, so each gathered line is one block of memory.
    src = np.ascontiguousarray(np.moveaxis(img, axis, 0))
    out = np.zeros((weights.shape[0], *src.shape[1:]), dtype=np.float64)
    bshape = (weights.shape[0],) + (1,) * (src.ndim - 1)
    # Accumulating in tap order keeps memory at one output-sized temporary.
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(bshape) * src[indices[:, k]]
    return np.moveaxis(out, 0, axis)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round to uint8 the way MATLAB's ``uint8()`` does: half away from zero, clipped to 0..255.

    NaN becomes 0, as in MATLAB. The rule is the pixel layer's (:func:`hat_cli.pixels.to_levels`).
    """
    return to_levels(img, np.uint8)


def _output_shape(
    in_shape: tuple[int, int], scale: float | tuple[float, float] | None, output_shape: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """MATLAB's size/scale bookkeeping: one of them given, the other derived."""
    if output_shape is not None:
        out = (int(output_shape[0]), int(output_shape[1]))
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"output_shape must be positive, got {output_shape}")
        if scale is None:
            return out, (out[0] / in_shape[0], out[1] / in_shape[1])
    if scale is None:
        raise ValueError("give scale or output_shape")
    scales = (float(scale), float(scale)) if np.isscalar(scale) else (float(scale[0]), float(scale[1]))
    if scales[0] <= 0 or scales[1] <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if output_shape is None:
        out = (math.ceil(scales[0] * in_shape[0]), math.ceil(scales[1] * in_shape[1]))
    return out, scales


def imresize(
    img: np.ndarray,
    scale: float | tuple[float, float] | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
    border: Border = "replicate",
    round_between_passes: bool = False,
) -> np.ndarray:
    """Resize like MATLAB's ``imresize(img, scale, 'bicubic')``.

    Args:
        img: ``HxW`` or ``HxWxC`` array, any numeric dtype; values are used as they are (0..255 or
            0..1 both work, the filter is linear).
        scale: factor for both axes, or ``(rows, cols)``; ``< 1`` shrinks. The output size is
            ``ceil(scale * size)`` as in MATLAB.
        output_shape: ``(rows, cols)`` instead of (or as well as) ``scale``; with only this, the
            per-axis scale is ``out / in``, as MATLAB derives it.
        antialiasing: stretch the kernel when shrinking (MATLAB's default for bicubic).
        border: how taps beyond the edge are folded back (see the module docstring).
        round_between_passes: round and clip to 0..255 after the first pass, as MATLAB does for a
            uint8 image (values must then be on the 0..255 scale).

    Returns:
        float64 array of shape ``out_rows x out_cols`` (``x C`` if the input had channels). Not
        rounded or clipped: use :func:`to_uint8` for MATLAB's final uint8 conversion.
    """
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    in_shape = (arr.shape[0], arr.shape[1])
    out_shape, scales = _output_shape(in_shape, scale, output_shape)

    # MATLAB: [~, order] = sort(scale) - stable, so rows go first when both scales are equal.
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    out = arr
    for pass_no, axis in enumerate(order):
        if out_shape[axis] == in_shape[axis] and scales[axis] == 1.0:
            continue  # MATLAB's weights are then the identity
        weights, indices = contributions(in_shape[axis], out_shape[axis], scales[axis], antialiasing, border)
        out = _resize_axis(out, axis, weights, indices)
        if round_between_passes and pass_no == 0:
            out = to_uint8(out).astype(np.float64)
    return out
