"""Padding to a network's size multiple (the official test recipe), and one padded forward.

Imports only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .contract import Network


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H', W'): reflect-pad bottom/right up to a multiple (official recipe).

    Reflection cannot add more than ``size - 1`` pixels at once, so tiny images are padded in
    several rounds (and a 1-pixel side is replicated).
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    while pad_h or pad_w:
        step_h = min(pad_h, x.shape[-2] - 1)
        step_w = min(pad_w, x.shape[-1] - 1)
        if (pad_h and step_h == 0) or (pad_w and step_w == 0):
            x = F.pad(x, (0, pad_w if step_w == 0 else 0, 0, pad_h if step_h == 0 else 0), mode="replicate")
            pad_h, pad_w = (0 if step_h == 0 else pad_h), (0 if step_w == 0 else pad_w)
            continue
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def run_padded(net: Network, x: Tensor) -> Tensor:
    """(B, C, h, w) image in 0..1 -> (B, C, s*h, s*w) in 0..1 (unclipped), any h and w.

    Pads bottom/right to the network's size multiple, maps 0..1 to its input range and back, and
    crops the padding off the output: what every caller of a :class:`Network` does.
    """
    height, width = x.shape[-2:]
    x = reflect_pad_to_multiple(x, net.size_multiple)
    value_range = net.input_range
    if value_range != 1.0:
        x = x * value_range
    out = net(x)
    if value_range != 1.0:
        out = out / value_range
    scale = net.scale
    return out[..., : height * scale, : width * scale]


__all__ = ["reflect_pad_to_multiple", "run_padded"]
