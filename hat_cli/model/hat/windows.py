"""HAT's windows: partition/reverse, relative-position indices, shift masks and the gather order
that takes features into (shifted) windows grouped by mask class.

This module imports only torch and einops.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ..layers import tensor_cache

SHIFT_MASK_VALUE = -100.0  # official value (not -inf): keeps softmax of fully masked rows finite


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B*nW, ws*ws, C), windows in row-major order."""
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=window_size, ww=window_size)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """(B*nW, ws*ws, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    return rearrange(
        windows,
        "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c",
        nh=height // window_size,
        nw=width // window_size,
        wh=window_size,
    )


def _grid(size: int) -> Tensor:
    """(2, size*size) row/column coordinates of a size x size window, row-major."""
    # Explicit CPU device: these tables are cached, so they must not inherit a default-device context.
    coords = torch.stack(
        torch.meshgrid(torch.arange(size, device="cpu"), torch.arange(size, device="cpu"), indexing="ij")
    )
    return coords.flatten(1)


@tensor_cache()
def relative_position_index(window_size: int) -> Tensor:
    """(ws*ws, ws*ws) index into a ((2ws-1)^2, heads) bias table, as the official ``rpi_sa``."""
    coords = _grid(window_size)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # 2, N, N in [0, 2ws-2]
    return rel[0] * (2 * window_size - 1) + rel[1]


@tensor_cache()
def overlap_relative_position_index(window_size: int, overlap_window_size: int) -> Tensor:
    """(ws*ws, ows*ows) index into OCAB's ((ws+ows-1)^2, heads) table, as the official ``rpi_oca``.

    The official offset makes some row indices negative; PyTorch indexing wraps them around the
    table, so the same wrap is applied here explicitly (``% table_size``) to stay bit-exact.
    """
    ws, ows = window_size, overlap_window_size
    rel = _grid(ows)[:, None, :] - _grid(ws)[:, :, None] + (ws - ows + 1)  # 2, ws*ws, ows*ows
    side = ws + ows - 1
    return (rel[0] * side + rel[1]) % (side * side)


def shift_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """(nW, N, N) additive mask of every window of a cyclically shifted image, as the official
    ``calculate_mask`` (windows row-major). Used by the reference path; the fast path needs only
    :func:`shift_mask_classes`."""
    labels = torch.zeros(height, width, device=device)
    regions = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for i, rows in enumerate(regions):
        for j, cols in enumerate(regions):
            labels[rows, cols] = 3 * i + j
    windows = window_partition(labels[None, :, :, None], window_size).squeeze(-1)  # nW, N
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, SHIFT_MASK_VALUE)


@tensor_cache()
def shift_mask_classes(window_size: int, shift_size: int, device: torch.device | str = "cpu") -> Tensor:
    """(4, N, N) additive masks for shifted windows: [interior, right column, bottom row, corner].

    Built with the official labelling on a 2x2-window image, whose four windows are exactly one
    of each class; every window of a larger image shares the mask of its class.
    """
    return shift_mask(2 * window_size, 2 * window_size, window_size, shift_size, device)


# (rows, columns, class) of the window grid; see shift_mask_classes.
_WINDOW_REGIONS = (
    (slice(0, -1), slice(0, -1), 0),
    (slice(0, -1), slice(-1, None), 1),
    (slice(-1, None), slice(0, -1), 2),
    (slice(-1, None), slice(-1, None), 3),
)

# (first window, stop window, shift-mask class or None) of a run of windows sharing one mask.
WindowGroup = tuple[int, int, int | None]


@tensor_cache(maxsize=64)
def window_order(
    height: int, width: int, window_size: int, shift_size: int, batch: int, device: torch.device
) -> tuple[Tensor, Tensor, tuple[WindowGroup, ...]]:
    """Gather indices that turn (B, H, W, C) features into (shifted) windows and back, in one copy.

    Returns ``(index, inverse, groups)`` for features flattened to (B*H*W, C) rows:
    ``rows[index]`` is (nW*B*N, C) window tokens, and ``windows[inverse]`` restores the rows.
    The cyclic shift is folded into ``index`` (no ``torch.roll``). Windows are grouped by shift-mask
    class (:data:`_WINDOW_REGIONS` order, row-major inside a class) and ordered window-major,
    batch-minor, so each class is one contiguous slice of the window batch for any B: attention
    runs once per class on a view, with one shared mask, instead of on copied sub-grids.
    """
    ws = window_size
    grid = torch.arange(height * width, device=device).view(height, width)
    if shift_size:
        grid = grid.roll((-shift_size, -shift_size), dims=(0, 1))
    grid = rearrange(grid, "(nh wh) (nw ww) -> nh nw (wh ww)", wh=ws, ww=ws)
    regions = _WINDOW_REGIONS if shift_size else ((slice(None), slice(None), None),)
    parts: list[Tensor] = []
    groups: list[WindowGroup] = []
    start = 0
    for rows, cols, shift_class in regions:
        part = grid[rows, cols].reshape(-1, ws * ws)
        if part.numel():
            parts.append(part)
            groups.append((start * batch, (start + len(part)) * batch, shift_class))
            start += len(part)
    windows = torch.cat(parts)  # nW, N: spatial position of each token
    offsets = torch.arange(batch, device=device) * (height * width)
    index = rearrange(windows[:, None, :] + offsets[None, :, None], "nw b n -> (nw b n)")
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=device)
    return index, inverse, tuple(groups)
