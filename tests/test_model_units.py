"""Unit tests of the architecture's building blocks against the official formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hat_cli.model.hat.windows import (
    _WINDOW_REGIONS,
    SHIFT_MASK_VALUE,
    overlap_relative_position_index,
    relative_position_index,
    shift_mask_classes,
    window_partition,
    window_reverse,
)
from hat_cli.model.padding import reflect_pad_to_multiple


def official_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def official_full_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, N, N) mask exactly as the official ``calculate_mask``."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    windows = official_partition(img, ws).squeeze(-1)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@pytest.mark.parametrize(("h", "w", "ws"), [(8, 8, 4), (12, 8, 4), (16, 24, 8), (4, 12, 4)])
def test_window_partition_and_reverse(h: int, w: int, ws: int) -> None:
    x = torch.randn(2, h, w, 5)
    windows = window_partition(x, ws)
    assert windows.shape == (2 * (h // ws) * (w // ws), ws * ws, 5)
    assert torch.equal(windows, official_partition(x, ws))
    assert torch.equal(window_reverse(windows, ws, h, w), x)


@pytest.mark.parametrize(("h", "w", "ws"), [(8, 8, 4), (12, 16, 4), (32, 16, 8), (4, 12, 4), (16, 16, 16)])
def test_shift_mask_classes_reproduce_official_mask(h: int, w: int, ws: int) -> None:
    full = official_full_mask(h, w, ws, ws // 2).view(h // ws, w // ws, ws * ws, ws * ws)
    classes = shift_mask_classes(ws, ws // 2)
    covered = torch.zeros(h // ws, w // ws, dtype=torch.bool)
    for rows, cols, cls in _WINDOW_REGIONS:
        region = full[rows, cols]
        if region.numel():
            assert torch.equal(region, classes[cls].expand_as(region))
            covered[rows, cols] = True
    assert covered.all()
    assert set(classes.unique().tolist()) <= {0.0, SHIFT_MASK_VALUE}


def test_relative_position_index_matches_official_formula() -> None:
    ws = 4
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    expected = rel.sum(-1)
    index = relative_position_index(ws)
    assert torch.equal(index, expected)
    assert index.min() == 0 and index.max() == (2 * ws - 1) ** 2 - 1


@pytest.mark.parametrize(("ws", "ows"), [(8, 12), (16, 24), (4, 6)])
def test_overlap_relative_position_index_selects_like_official(ws: int, ows: int) -> None:
    """Official indices can be negative and wrap around the table; ours are the wrapped ones."""
    ori = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    ext = torch.stack(torch.meshgrid(torch.arange(ows), torch.arange(ows), indexing="ij")).flatten(1)
    rel = (ext[:, None, :] - ori[:, :, None]).permute(1, 2, 0).clone()
    rel[:, :, 0] += ws - ows + 1
    rel[:, :, 1] += ws - ows + 1
    rel[:, :, 0] *= ws + ows - 1
    official = rel.sum(-1)
    table = torch.randn((ws + ows - 1) ** 2, 3)
    ours = overlap_relative_position_index(ws, ows)
    assert ours.min() >= 0
    assert torch.equal(table[ours.view(-1)], table[official.view(-1)])


def test_ocab_strided_windows_match_nn_unfold() -> None:
    ws, ows, c = 4, 6, 3
    kv = torch.randn(2, 8, 12, c)  # (B, H, W, C)
    pad = (ows - ws) // 2
    ours = F.pad(kv, (0, 0, pad, pad, pad, pad)).unfold(1, ows, ws).unfold(2, ows, ws)  # B nh nw C ows ows
    unfold = torch.nn.Unfold(kernel_size=ows, stride=ws, padding=pad)(kv.permute(0, 3, 1, 2))  # B, C*ows*ows, L
    reference = unfold.view(2, c, ows, ows, 2, 3).permute(0, 4, 5, 1, 2, 3)
    assert torch.equal(ours, reference)


def test_reflect_pad_to_multiple_matches_official_and_handles_tiny_images() -> None:
    x = torch.randn(1, 3, 21, 30)
    padded = reflect_pad_to_multiple(x, 8)
    assert torch.equal(padded, F.pad(x, (0, 2, 0, 3), mode="reflect"))
    tiny = reflect_pad_to_multiple(torch.randn(1, 3, 3, 1), 16)
    assert tiny.shape == (1, 3, 16, 16)
    assert torch.equal(reflect_pad_to_multiple(x[..., :16, :24], 8), x[..., :16, :24])
