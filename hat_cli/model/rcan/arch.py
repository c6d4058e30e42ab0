"""RCAN (Zhang et al., ECCV 2018) and HAN (Niu et al., ECCV 2020), with the official parameter names.

Module names and shapes are those of the official checkpoints (yulunzhang/RCAN, wwlCape/HAN: bare
state dicts written by the EDSR-style trainer, ``sub_mean``/``add_mean`` included), so they load
with ``strict=True``. HAN is RCAN's network with a different body readout, so it subclasses RCAN.

Networks take and return images in ``0..rgb_range`` (255 for every official model); callers
map 0..1 images through :func:`hat_cli.model.padding.run_padded`. Differences from the official
code, none of which changes the result beyond float rounding:
- HAN writes each body output into one preallocated (B, N, C, H, W) stack instead of re-concatenating
  a growing tensor after every group (same newest-first order, a fraction of the memory);
- the channel-spatial attention's 1 -> 1 Conv3d runs as a 2-D conv with a banded C x C weight (see
  :meth:`ChannelSpatialAttention.volume_conv`): Conv3d's column buffer alone takes 27 feature maps;
- the layer attention applies ``gamma * A @ V + V`` as one product ``(gamma * A + I) @ V``, and forms
  its N x N energies in at least float32 (they sum C*H*W products: half precision would scramble the
  softmax);
- HAN computes ``last_conv(la(stack))`` one attended layer at a time (:meth:`HAN.attend_layers`),
  never materialising the N*C-channel LAM output (nor oneDNN's reordered copy of it).

Note that the channel attention (a global average pool) and HAN's layer attention (energies over
the whole image) see the whole input, so tiled and untiled outputs differ, as with the official code.

This module imports only torch and einops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..contract import values_to_bytes
from .config import HANConfig, RCANConfig, upsampler_stages

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean; only the random initialisation uses it


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """The official ``default_conv``: biased, 'same' padding."""
    return nn.Conv2d(cin, cout, 3, padding=1)


class MeanShift(nn.Conv2d):
    """The 1x1 colour conv that subtracts (``sign=-1``) or adds back the training-set mean.

    Its tensors are stored in every official checkpoint and encode rgb_range and the mean, so they
    are loaded, never recomputed; the initial values here only make a fresh network sensible.
    """

    def __init__(self, n_colors: int, rgb_range: float, sign: int) -> None:
        super().__init__(n_colors, n_colors, 1)
        mean = RGB_MEAN if n_colors == 3 else (0.0,) * n_colors
        with torch.no_grad():
            self.weight.copy_(torch.eye(n_colors).view(n_colors, n_colors, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(mean))
        self.requires_grad_(False)  # fixed, as officially


class CALayer(nn.Module):
    """Channel attention: (B, C, H, W) -> (B, C, H, W), each channel scaled by a gate computed from
    the global average of all channels through a ``C -> C // reduction -> C`` bottleneck."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(F.adaptive_avg_pool2d(x, 1))


class RCAB(nn.Module):
    """Residual channel attention block: (B, C, H, W) -> (B, C, H, W), ``x + CA(conv(relu(conv(x))))``."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            nn.ReLU(inplace=True),
            conv3x3(channels, channels),
            CALayer(channels, squeezed),
        )

    def forward(self, x: Tensor) -> Tensor:
        res = self.body(x)
        res += x  # in place: the product is not saved for backward, and this saves one map
        return res


class ResidualGroup(nn.Module):
    """``n_resblocks`` RCABs and a conv with a skip around them: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, squeezed: int, n_resblocks: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [RCAB(channels, squeezed) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, conv3x3(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        res = self.body(x)
        res += x
        return res


class Upsampler(nn.Sequential):
    """EDSR upsampler: (B, C, H, W) -> (B, C, sH, sW) by (conv to 4C, PixelShuffle(2)) per x2, or one
    (conv to 9C, PixelShuffle(3)) for x3."""

    def __init__(self, scale: int, channels: int) -> None:
        layers: list[nn.Module] = []
        for factor in upsampler_stages(scale):
            layers += [conv3x3(channels, factor * channels), nn.PixelShuffle(math.isqrt(factor))]
        super().__init__(*layers)


class LayerAttention(nn.Module):
    """HAN's layer attention module (LAM): (B, N, C, H, W) -> (B, N*C, H, W).

    Each of the N stacked layers becomes ``gamma * sum_j A[i, j] * layer_j + layer_i`` with
    ``A = softmax(max(E) - E)`` per row and ``E[i, j] = <layer_i, layer_j>`` over all C*H*W values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def mixing(self, x: Tensor) -> Tensor:
        """(B, N, C, H, W) -> (B, N, N) ``M = gamma * A + I``, in at least float32: the output's
        layer i is ``sum_j M[i, j] * layer_j`` (``gamma * A @ V + V`` as one product)."""
        flat = rearrange(x, "b n c h w -> b n (c h w)")
        wide = flat.to(torch.promote_types(flat.dtype, torch.float32))
        with torch.autocast(x.device.type, enabled=False):  # energies sum C*H*W products
            energy = torch.bmm(wide, wide.transpose(1, 2))
        attention = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        identity = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        return self.gamma.to(attention.dtype) * attention + identity

    def forward(self, x: Tensor) -> Tensor:
        flat = rearrange(x, "b n c h w -> b n (c h w)")
        out = torch.bmm(self.mixing(x).to(flat.dtype), flat)
        return rearrange(out, "b n (c h w) -> b (n c) h w", c=x.shape[2], h=x.shape[3])


class ChannelSpatialAttention(nn.Module):
    """HAN's channel-spatial attention module (CSAM): (B, C, H, W) -> (B, C, H, W).

    A 1 -> 1 3x3x3 Conv3d over the (C, H, W) volume gives a sigmoid gate ``G``; the output is
    ``x * gamma * G + x``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)  # kept as the official Conv3d for its parameters
        self.gamma = nn.Parameter(torch.zeros(1))

    def volume_conv(self, x: Tensor) -> Tensor:
        """``self.conv`` on ``x`` as a (B, 1, C, H, W) volume, returned as (B, C, H, W).

        A 3x3x3 kernel sliding over channels is one 2-D C -> C 3x3 conv whose weight is banded:
        output channel o sees input channel i through depth tap ``i - o + 1`` when ``|i - o| <= 1``
        (zero beyond, which is also Conv3d's zero padding at the first and last channel). Same
        numbers as Conv3d, but one map of working memory where its column buffer takes 27.
        """
        channels = x.shape[1]
        index = torch.arange(channels, device=x.device)
        tap = index[None, :] - index[:, None] + 1  # (out, in) -> the depth tap linking them
        tap = tap.where((tap >= 0) & (tap <= 2), 3)  # 3: an all-zero tap, beyond the kernel
        kernels = self.conv.weight[0, 0]  # (3, 3, 3): depth, height, width
        banded = torch.cat([kernels, kernels.new_zeros(1, 3, 3)])[tap]  # (C, C, 3, 3)
        return F.conv2d(x, banded, self.conv.bias.expand(channels), padding=1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.volume_conv(x))
        return torch.addcmul(x, x, gate * self.gamma.to(gate.dtype))


class RCAN(nn.Module):
    """Residual channel attention network: (B, n_colors, H, W) in 0..rgb_range -> (B, n_colors, sH, sW)."""

    def __init__(self, config: RCANConfig) -> None:
        super().__init__()
        self.config = config
        feats, colors = config.n_feats, config.n_colors
        self.sub_mean = MeanShift(colors, config.rgb_range, -1)
        self.head = nn.Sequential(conv3x3(colors, feats))
        groups: list[nn.Module] = [
            ResidualGroup(feats, config.squeezed, config.n_resblocks) for _ in range(config.n_resgroups)
        ]
        self.body = nn.Sequential(*groups, conv3x3(feats, feats))
        self.tail = nn.Sequential(Upsampler(config.scale, feats), conv3x3(feats, colors))
        self.add_mean = MeanShift(colors, config.rgb_range, 1)

    @property
    def scale(self) -> int:
        return self.config.scale

    size_multiple = 1  # fully convolutional: any input size

    @property
    def input_range(self) -> float:
        return self.config.rgb_range

    @property
    def in_channels(self) -> int:
        return self.config.n_colors

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return values_to_bytes(self.config.working_values_per_pixel(), dtype)

    def forward_body(self, x: Tensor) -> Tensor:
        """(B, C, H, W) head features -> (B, C, H, W) body features, before the long skip."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.sub_mean(x))
        res = self.forward_body(x)
        res += x  # long skip
        return self.add_mean(self.tail(res))


class HAN(RCAN):
    """Holistic attention network: RCAN whose body output is the fusion (``last``) of the
    channel-spatial attention on the body's last output and the layer attention over all of them."""

    config: HANConfig

    def __init__(self, config: HANConfig) -> None:
        super().__init__(config)
        feats = config.n_feats
        self.csa = ChannelSpatialAttention()
        self.la = LayerAttention()
        self.last_conv = nn.Conv2d(feats * config.n_layers, feats, 3, padding=1)
        self.last = nn.Conv2d(2 * feats, feats, 3, padding=1)

    def stacked_body(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> every body module's output as (B, N, C, H, W), newest first (the official
        order), and the last output (B, C, H, W)."""
        layers = len(self.body)
        stack: Tensor | None = None
        for index, module in enumerate(self.body):
            x = module(x)
            if stack is None:
                stack = x.new_empty((x.shape[0], layers, *x.shape[1:]))
            stack[:, layers - 1 - index] = x
        assert stack is not None
        return stack, x

    def attend_layers(self, stack: Tensor) -> Tensor:
        """``last_conv(la(stack))``: (B, N, C, H, W) -> (B, C, H, W), one layer at a time.

        ``last_conv`` is linear in its N*C input channels: it is the sum over layers i of a C -> C
        conv of the i-th attended layer. Building each attended layer on its own keeps one map
        alive where the whole LAM output takes N, and oneDNN's reordered copy of it N more.
        """
        mix = self.la.mixing(stack).to(stack.dtype)
        weights = rearrange(self.last_conv.weight, "o (n c) kh kw -> n o c kh kw", n=stack.shape[1])
        total: Tensor | None = None
        for layer, weight in enumerate(weights):
            attended = torch.einsum("bj,bjchw->bchw", mix[:, layer], stack)
            part = F.conv2d(attended, weight, padding=1)
            if total is None:  # sum in at least float32: N half-precision partial sums lose what one conv keeps
                total = part.to(torch.promote_types(part.dtype, torch.float32))
            else:
                total += part
        assert total is not None
        total += rearrange(self.last_conv.bias, "c -> c 1 1")
        return total.to(part.dtype)

    def forward_body(self, x: Tensor) -> Tensor:
        stack, res = self.stacked_body(x)
        layers = self.attend_layers(stack)
        del stack  # free the N maps before the attention and fusion convs allocate theirs
        return self.last(torch.cat([self.csa(res), layers], dim=1))


def build_network(config: RCANConfig) -> RCAN:
    """HAN for a :class:`HANConfig`, else RCAN."""
    return HAN(config) if isinstance(config, HANConfig) else RCAN(config)


__all__ = [
    "HAN",
    "RCAB",
    "RCAN",
    "CALayer",
    "ChannelSpatialAttention",
    "LayerAttention",
    "MeanShift",
    "ResidualGroup",
    "Upsampler",
    "build_network",
]
