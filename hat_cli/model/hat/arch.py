"""HAT: Hybrid Attention Transformer for image super-resolution (Chen et al., CVPR 2023).

Parameter names and shapes are exactly those of the official checkpoints, so official and
community files load with ``strict=True``. Features travel between blocks as ``(B, H, W, C)``.

Differences from the official code, none of which changes the result:
- attention runs through ``scaled_dot_product_attention`` (4-D masks, so CPU gets its flash
  kernel; head dims padded to 8 on CUDA) with the relative position bias (and the shift mask) as
  an additive mask; the official roll/partition/plain-softmax path is kept as the reference
  (``fused_attention=False``);
- bias tensors, index tables and shift masks are built once and cached, not on every forward
  (under torch.compile they are built in the graph instead);
- the shift mask is never materialised per window: with a cyclic shift only the last row and
  column of windows see wrapped-around pixels, so windows fall into four classes (interior,
  right column, bottom row, corner) that each share one ``(N, N)`` mask; one cached gather index
  takes the image into windows grouped by class, with the cyclic shift folded in (no roll);
- OCAB takes overlapping key/value windows as strided views instead of ``nn.Unfold``;
- fp32 CPU inference runs the linear layers through oneDNN (GELU fused), not the BLAS;
- inputs of any size are reflect-padded bottom/right to a window multiple and the output cropped
  (the official test recipe), so ``model(x)`` works on any image.

The windows live in :mod:`.windows`, generic layers (SDPA, oneDNN Linear, bias cache) in
:mod:`hat_cli.model.layers`. This module imports only torch and einops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..contract import values_to_bytes
from ..layers import BiasCache, Linear, add_residual, attend, cached, to_channels_last
from ..padding import reflect_pad_to_multiple
from .config import HATConfig
from .windows import (
    WindowGroup,
    overlap_relative_position_index,
    relative_position_index,
    shift_mask,
    shift_mask_classes,
    window_order,
    window_partition,
    window_reverse,
)

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean the official models subtract


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc1.use_onednn(x):  # GELU fused into the GEMM as a oneDNN post-op
            hidden = self.fc1.onednn(x, "gelu")
        else:
            hidden = self.fc1(x)
            # Without autograd (which needs GELU's input) GELU can overwrite it: one buffer less.
            hidden = self.act(hidden) if torch.is_grad_enabled() else torch.ops.aten.gelu_(hidden)
        return self.fc2(hidden)


class ChannelAttention(nn.Module):
    """RCAN channel attention: x * sigmoid(MLP(avgpool(x))). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_feat: int, squeeze_factor: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: conv-GELU-conv-CA. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, num_feat: int, compress_ratio: int, squeeze_factor: int) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.fused = True
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self._bias = BiasCache()

    def _mask(self, dtype: torch.dtype, shift_class: int | None) -> Tensor:
        n = self.window_size**2
        extra = None
        if shift_class is not None:
            device = self.relative_position_index.device
            extra = cached(shift_mask_classes, self.window_size, self.window_size // 2, device)[shift_class]
        return self._bias.get(
            self.relative_position_bias_table,
            self.relative_position_index,
            (n, n),
            extra=extra,
            variant=-1 if shift_class is None else shift_class,
            dtype=dtype,
        )

    def forward(self, windows: Tensor, groups: tuple[WindowGroup, ...]) -> Tensor:
        """(nWB, N, C) window tokens -> (nWB, N, C). Each group is a slice of windows sharing a mask."""
        n_windows, n, c = windows.shape
        q, k, v = rearrange(
            self.qkv(windows), "w n (three heads d) -> three w heads n d", three=3, heads=self.num_heads
        )
        outs = []
        for start, stop, shift_class in groups:
            out = attend(q[start:stop], k[start:stop], v[start:stop], self._mask(q.dtype, shift_class), self.fused)
            outs.append(out.transpose(1, 2))  # (w, n, heads, d): what SDPA kernels write, so no copy
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self.proj(out.reshape(n_windows, n, c))

    def forward_reference(self, windows: Tensor, shift: Tensor | None) -> Tensor:
        """The official formulation: (B*nW, N, C) row-major windows, per-window shift masks
        (nW, N, N) or None, plain softmax. Kept as the reference the fast path is tested against."""
        n_windows = windows.shape[0]
        q, k, v = rearrange(
            self.qkv(windows), "w n (three heads d) -> three w heads n d", three=3, heads=self.num_heads
        )
        mask = self._mask(q.dtype, None)
        if shift is not None:
            mask = (shift.to(mask)[:, None] + mask).repeat(n_windows // shift.shape[0], 1, 1, 1)
        out = attend(q, k, v, mask, fused=False)
        return self.proj(rearrange(out, "w heads n d -> w n (heads d)"))


class HAB(nn.Module):
    """Hybrid attention block: (S)W-MSA + conv_scale * CAB in parallel, then MLP. (B, H, W, C)."""

    def __init__(self, config: HATConfig, num_heads: int, shift_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.shift_size = shift_size
        self.conv_scale = config.conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, config.window_size, num_heads, config.qkv_bias)
        self.conv_block = CAB(dim, config.compress_ratio, config.squeeze_factor)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, c = x.shape
        y = self.norm1(x)
        # permute gives a channels-last NCHW view: convolutions run on it without a copy.
        conv_x = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.attn.fused:
            index, inverse, groups = cached(
                window_order, height, width, self.attn.window_size, self.shift_size, batch, x.device
            )
            windows = y.reshape(-1, c).index_select(0, index).view(-1, self.attn.window_size**2, c)
            attn_x = self.attn(windows, groups).view(-1, c).index_select(0, inverse).view_as(x)
        else:
            attn_x = self._reference_attention(y)
        # shortcut + attn + conv_scale * conv, in the official order; add_ saves a temporary.
        x = (x + attn_x).add_(conv_x, alpha=self.conv_scale)
        return add_residual(self.mlp(self.norm2(x)), x)

    def _reference_attention(self, y: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C): roll, partition, attend, reverse, roll back (official)."""
        ws, shift = self.attn.window_size, self.shift_size
        height, width = y.shape[1:3]
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        mask = shift_mask(height, width, ws, shift) if shift else None
        out = window_reverse(self.attn.forward_reference(window_partition(y, ws), mask), ws, height, width)
        return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


class OCAB(nn.Module):
    """Overlapping cross-attention block: queries from ws x ws windows attend to keys/values from
    enlarged, overlapping ows x ows windows (zero-padded at the border). (B, H, W, C)."""

    def __init__(self, config: HATConfig, num_heads: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size = ws = config.window_size
        self.overlap_win_size = ows = config.overlap_window_size
        self.num_heads = num_heads
        self.fused = True
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = Linear(dim, dim * 3, bias=config.qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((ws + ows - 1) ** 2, num_heads))
        self.proj = Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, config.mlp_hidden)
        self.register_buffer("relative_position_index", overlap_relative_position_index(ws, ows), persistent=False)
        self._bias = BiasCache()

    def forward(self, x: Tensor) -> Tensor:
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        batch, height, width, c = x.shape
        qkv = self.qkv(self.norm1(x))  # B, H, W, 3C
        index, inverse, _ = cached(window_order, height, width, ws, 0, batch, x.device)
        # Queries gathered straight into window order (nW*B windows, window-major like k/v below).
        q = qkv.view(-1, 3 * c)[:, :c].index_select(0, index)
        q = rearrange(q, "(w n) (heads d) -> w heads n d", n=ws * ws, heads=heads)
        pad = (ows - ws) // 2
        kv = F.pad(qkv[..., c:], (0, 0, pad, pad, pad, pad))
        # (B, nh, nw, 2C, ows, ows) strided view of the overlapping windows; the one copy below
        # keeps channels innermost ((oh ow) heads d), the layout SDPA kernels read natively.
        kv = kv.unfold(1, ows, ws).unfold(2, ows, ws)
        k, v = rearrange(kv, "b nh nw (two heads d) oh ow -> two (nh nw b) (oh ow) heads d", two=2, heads=heads)
        mask = self._bias.get(
            self.relative_position_bias_table,
            self.relative_position_index,
            (ws * ws, ows * ows),
            dtype=q.dtype,
        )
        out = attend(q, k.transpose(1, 2), v.transpose(1, 2), mask, self.fused)
        out = rearrange(out, "w heads n d -> (w n) (heads d)").index_select(0, inverse).view_as(x)
        x = add_residual(self.proj(out), x)
        return add_residual(self.mlp(self.norm2(x)), x)


class AttenBlocks(nn.Module):
    """The HABs of one residual group (shift on every other block), then one OCAB."""

    def __init__(self, config: HATConfig, depth: int, num_heads: int) -> None:
        super().__init__()
        shift = config.window_size // 2
        self.blocks = nn.ModuleList(HAB(config, num_heads, 0 if i % 2 == 0 else shift) for i in range(depth))
        self.overlap_attn = OCAB(config, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.overlap_attn(x)


class RHAG(nn.Module):
    """Residual hybrid attention group: x + conv(blocks(x)). (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, config: HATConfig, depth: int, num_heads: int) -> None:
        super().__init__()
        self.residual_group = AttenBlocks(config, depth, num_heads)
        dim = config.embed_dim
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if config.resi_connection == "1conv" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.residual_group(x)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


class PatchEmbed(nn.Module):
    """Holds the optional LayerNorm after the first conv (official name ``patch_embed.norm``)."""

    def __init__(self, dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class Upsample(nn.Sequential):
    """Pixel-shuffle upsampler: (conv 4C, shuffle 2) x log2(scale), or (conv 9C, shuffle 3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported: use 2^n or 3")
        super().__init__(*layers)


class HAT(nn.Module):
    """Hybrid Attention Transformer. (B, in_chans, H, W) in [0, 1] -> (B, in_chans, sH, sW)."""

    def __init__(self, config: HATConfig, fused_attention: bool = True) -> None:
        super().__init__()
        if config.upsampler != "pixelshuffle":
            raise ValueError(f"upsampler {config.upsampler!r} is not supported (only 'pixelshuffle')")
        self.config = config
        dim = config.embed_dim
        mean = RGB_MEAN if config.in_chans == 3 else (0.0,) * config.in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(config.in_chans, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, config.patch_norm)
        self.layers = nn.ModuleList(
            RHAG(config, depth, heads) for depth, heads in zip(config.depths, config.num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1) if config.resi_connection == "1conv" else nn.Identity()
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, config.num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(config.upscale, config.num_feat)
        self.conv_last = nn.Conv2d(config.num_feat, config.in_chans, 3, 1, 1)
        self.apply(self._init_weights)
        for module in self.modules():
            if isinstance(module, WindowAttention | OCAB):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
        self.set_fused_attention(fused_attention)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_fused_attention(self, enabled: bool) -> None:
        """Switch every attention between SDPA kernels (True) and the plain softmax math (False)."""
        for module in self.modules():
            if isinstance(module, WindowAttention | OCAB):
                module.fused = enabled

    @property
    def scale(self) -> int:
        return self.config.upscale

    # ----------------------------------------------------------------- the Network contract
    @property
    def size_multiple(self) -> int:
        return self.config.window_size

    input_range = 1.0  # 0..1 images; img_range is applied inside, as officially

    @property
    def in_channels(self) -> int:
        return self.config.in_chans

    @property
    def fused_attention(self) -> bool:
        """False when any attention module runs the plain softmax path."""
        return all(module.fused for module in self.modules() if isinstance(module, WindowAttention | OCAB))

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return values_to_bytes(self.config.working_values_per_pixel(self.fused_attention), dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) deep features; H and W are window multiples."""
        x = self.patch_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = reflect_pad_to_multiple(x, self.config.window_size)
        mean = self.mean.to(x.dtype)
        x = to_channels_last((x - mean) * self.config.img_range)
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        x = x / self.config.img_range + mean
        scale = self.config.upscale
        return x[..., : height * scale, : width * scale]
