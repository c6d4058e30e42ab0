"""HAT hyper-parameters, and how to read them back from a state dict's tensor shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..contract import NotThisFamily, finite_number, positive_int

if TYPE_CHECKING:
    import torch

# The official architecture hard-codes these; they are written here once.
OFFICIAL_CONV_SCALE = 0.01
OFFICIAL_IMG_RANGE = 1.0
# The memory model's calibration (see HATConfig.working_values_per_pixel).
BODY_VALUES_PER_CHANNEL = 20.0
UPSAMPLER_COPIES = 2.2
SCORE_COPIES = 1.0
# Window sides a checkpoint may ask for. The position-index buffers grow as ws^2 x ows^2: a 230 KB
# bias table declaring a 120-pixel window would build 3 GB of indices. Official HATs use 16.
MAX_WINDOW_SIZE = 32
MAX_OVERLAP_WINDOW_SIZE = 2 * MAX_WINDOW_SIZE
# Hidden scalars, far beyond the official 0.01 and 1.0 (255 for some community files).
MAX_CONV_SCALE = 1e3
MAX_IMG_RANGE = 1e5


@dataclass(frozen=True)
class HATConfig:
    """Everything needed to build a HAT; names follow the official ``HAT.__init__`` keywords."""

    HIDDEN: ClassVar[tuple[str, ...]] = ("conv_scale", "img_range")

    upscale: int = 4
    in_chans: int = 3
    embed_dim: int = 180
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    window_size: int = 16
    compress_ratio: int = 3
    squeeze_factor: int = 30
    conv_scale: float = OFFICIAL_CONV_SCALE
    overlap_ratio: float = 0.5
    mlp_ratio: float = 2.0
    img_range: float = OFFICIAL_IMG_RANGE
    qkv_bias: bool = True
    patch_norm: bool = True
    resi_connection: str = "1conv"
    upsampler: str = "pixelshuffle"
    num_feat: int = 64  # width of the reconstruction head (hard-coded to 64 officially)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept lists (TOML/JSON) but store tuples so configs hash and compare.
        object.__setattr__(self, "depths", tuple(positive_int(f"depths[{i}]", d) for i, d in enumerate(self.depths)))
        object.__setattr__(
            self, "num_heads", tuple(positive_int(f"num_heads[{i}]", h) for i, h in enumerate(self.num_heads))
        )
        for name in ("in_chans", "embed_dim", "window_size", "compress_ratio", "squeeze_factor", "num_feat"):
            positive_int(name, getattr(self, name))
        for name in ("conv_scale", "img_range", "mlp_ratio", "overlap_ratio"):
            finite_number(name, getattr(self, name))
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must be non-empty and of the same length")
        if self.upscale not in (1, 2, 3, 4, 8) or isinstance(self.upscale, bool):
            raise ValueError(f"upscale {self.upscale!r} is not supported (1, 2, 3, 4 or 8)")
        if self.img_range <= 0 or self.mlp_ratio <= 0 or self.overlap_ratio < 0:
            raise ValueError("img_range and mlp_ratio must be > 0, overlap_ratio >= 0")
        if abs(self.conv_scale) > MAX_CONV_SCALE or self.img_range > MAX_IMG_RANGE:
            # 1e308 would overflow float32 in the forward: one clear error here instead
            raise ValueError(f"conv_scale must be within +-{MAX_CONV_SCALE:g} and img_range at most {MAX_IMG_RANGE:g}")
        for heads in self.num_heads:
            if self.embed_dim % heads:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {heads}")
        for name in ("compress_ratio", "squeeze_factor"):
            if getattr(self, name) > self.embed_dim:
                raise ValueError(f"{name} {getattr(self, name)} leaves no channels of embed_dim {self.embed_dim}")
        if self.window_size > MAX_WINDOW_SIZE or self.overlap_window_size > MAX_OVERLAP_WINDOW_SIZE:
            raise ValueError(
                f"window {self.window_size} (overlap window {self.overlap_window_size}) is beyond the "
                f"supported {MAX_WINDOW_SIZE} ({MAX_OVERLAP_WINDOW_SIZE}); official HATs use 16 (24)"
            )
        if self.resi_connection not in ("1conv", "identity"):
            raise ValueError(f"resi_connection {self.resi_connection!r}: use '1conv' or 'identity'")

    @property
    def overlap_window_size(self) -> int:
        """Side of OCAB's key/value window: ``ws + int(ws * overlap_ratio)`` as officially."""
        return self.window_size + int(self.window_size * self.overlap_ratio)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_params(self) -> int:
        """Parameter count of the network this config builds, without building it (no torch)."""
        dim, ws, ows, hidden = self.embed_dim, self.window_size, self.overlap_window_size, self.mlp_hidden

        def conv(cin: int, cout: int, k: int = 3) -> int:
            return cin * cout * k * k + cout

        def linear(cin: int, cout: int, bias: bool = True) -> int:
            return cin * cout + (cout if bias else 0)

        norm = 2 * dim
        mlp = linear(dim, hidden) + linear(hidden, dim)
        qkv_proj = linear(dim, 3 * dim, self.qkv_bias) + linear(dim, dim)
        squeezed, compressed = dim // self.squeeze_factor, dim // self.compress_ratio
        cab = conv(dim, compressed) + conv(compressed, dim) + conv(dim, squeezed, 1) + conv(squeezed, dim, 1)
        one_conv = conv(dim, dim) if self.resi_connection == "1conv" else 0
        total = conv(self.in_chans, dim) + (norm if self.patch_norm else 0) + norm + one_conv
        for depth, heads in zip(self.depths, self.num_heads, strict=True):
            hab = 2 * norm + (2 * ws - 1) ** 2 * heads + qkv_proj + cab + mlp
            ocab = 2 * norm + (ws + ows - 1) ** 2 * heads + qkv_proj + mlp
            total += depth * hab + ocab + one_conv
        stages = [4] * int(math.log2(self.upscale)) if self.upscale & (self.upscale - 1) == 0 else [9]
        total += conv(dim, self.num_feat) + sum(conv(self.num_feat, n * self.num_feat) for n in stages)
        return total + conv(self.num_feat, self.in_chans)

    def working_values_per_pixel(self, fused_attention: bool = True) -> float:
        """Peak live float values of one forward per input pixel (the ``--tile auto`` memory model).

        Measured as the rise of peak RSS over 96 and 160 px tiles on CPU
        (``benchmarks/bench_tiling_memory.py --calibrate``): the body keeps ~20 values per channel
        (residual stream, LayerNorm, CAB, qkv and its window copies, MLP); the pixel-shuffle head
        ~2.2 * num_feat * scale^2; the two add up (memory freed by the body stays in the process
        for the head's larger blocks). Fused attention keeps no score matrices; the plain path
        materialises per head ws^2 (window attention) + ows^2 (OCAB) scores per pixel.
        """
        values = BODY_VALUES_PER_CHANNEL * self.embed_dim + UPSAMPLER_COPIES * self.num_feat * self.upscale**2
        if not fused_attention:
            values += SCORE_COPIES * max(self.num_heads) * (self.window_size**2 + self.overlap_window_size**2)
        return values

    @property
    def scale(self) -> int:
        return self.upscale

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data["depths"] = list(self.depths)
        data["num_heads"] = list(self.num_heads)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HATConfig:
        """Build from official-style keywords; unknown keys (img_size, ...) are kept in ``extra``."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)


class NotHATStateDict(NotThisFamily):
    """The tensors do not describe a HAT network."""


_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")
_UPSAMPLE_KEY = re.compile(r"^upsample\.(\d+)\.weight$")


def _side_of_square(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise NotHATStateDict(f"{what} has {count} rows, not a square number")
    return side


def ratio_for(target: int, base: int) -> float:
    """The smallest float ``r`` with ``int(base * r) == target`` (``target / base`` can land a hair
    below: 0.55 * 20 = 10.999...), so a ratio read from shapes rebuilds the same integer."""
    ratio = target / base
    while int(base * ratio) < target:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _tensor(state: Mapping[str, torch.Tensor], key: str, ndim: int | None = None) -> torch.Tensor:
    if key not in state:
        raise NotHATStateDict(f"missing {key}")
    tensor = state[key]
    if ndim is not None and tensor.ndim != ndim:
        raise NotHATStateDict(f"{key} has {tensor.ndim} dimensions, expected {ndim}")
    if tensor.numel() == 0:
        raise NotHATStateDict(f"{key} is empty")
    return tensor


def _depths(state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per residual group; groups and blocks must be numbered 0..N-1 without gaps."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        if match := _BLOCK_KEY.match(key):
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if not blocks:
        raise NotHATStateDict("no HAT tensors (conv_first, layers.N.residual_group.blocks.M, ...) found")
    if sorted(blocks) != list(range(len(blocks))):
        raise NotHATStateDict("residual groups are not numbered 0..N-1")
    for layer, found in blocks.items():
        if sorted(found) != list(range(len(found))):
            raise NotHATStateDict(f"blocks of residual group {layer} are not numbered 0..N-1")
    return tuple(len(blocks[i]) for i in range(len(blocks)))


def _block(state: Mapping[str, torch.Tensor], layer: int, name: str, ndim: int) -> torch.Tensor:
    return _tensor(state, f"layers.{layer}.residual_group.blocks.0.{name}", ndim)


def _attention(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, Any]:
    """Heads per group, window size and overlap ratio, from the bias tables' shapes."""
    tables = [_block(state, i, "attn.relative_position_bias_table", 2) for i in range(num_layers)]
    window_size = (_side_of_square(tables[0].shape[0], "relative_position_bias_table") + 1) // 2
    ocab = _tensor(state, "layers.0.residual_group.overlap_attn.relative_position_bias_table", 2)
    overlap_win = _side_of_square(ocab.shape[0], "OCAB bias table") - window_size + 1
    if overlap_win < window_size:
        raise NotHATStateDict(f"OCAB window {overlap_win} is smaller than the window {window_size}")
    return {
        "num_heads": tuple(int(t.shape[1]) for t in tables),
        "window_size": window_size,
        "overlap_ratio": ratio_for(overlap_win - window_size, window_size),
    }


def _block_widths(state: Mapping[str, torch.Tensor], embed_dim: int) -> dict[str, Any]:
    """CAB compression, channel-attention squeeze and MLP ratio, from the first block's layers."""
    compressed = _block(state, 0, "conv_block.cab.0.weight", 4).shape[0]
    squeezed = _block(state, 0, "conv_block.cab.3.attention.1.weight", 4).shape[0]
    hidden = _block(state, 0, "mlp.fc1.weight", 2).shape[0]
    return {
        "compress_ratio": embed_dim // compressed,
        "squeeze_factor": embed_dim // squeezed,
        "mlp_ratio": ratio_for(hidden, embed_dim),
    }


def _upsampler(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Scale and reconstruction width from the pixel-shuffle head."""
    if "conv_before_upsample.0.weight" not in state or "upsample.0.weight" not in state:
        raise NotHATStateDict("only the 'pixelshuffle' upsampler (every official HAT) is supported")
    num_feat = _tensor(state, "conv_before_upsample.0.weight", 4).shape[0]
    first_up = _tensor(state, "upsample.0.weight", 4).shape[0] // num_feat
    stages = sorted(int(m[1]) for k in state if (m := _UPSAMPLE_KEY.match(k)))
    if first_up == 9 and stages == [0]:
        return {"upscale": 3, "num_feat": num_feat}
    if first_up == 4 and stages == list(range(0, 2 * len(stages), 2)):
        return {"upscale": 2 ** len(stages), "num_feat": num_feat}
    raise NotHATStateDict(f"upsample.0 has {first_up}x channels over {len(stages)} stages; expected x2^n or x3")


def detect_config(
    state_dict: Mapping[str, torch.Tensor],
    conv_scale: float = OFFICIAL_CONV_SCALE,
    img_range: float = OFFICIAL_IMG_RANGE,
) -> HATConfig:
    """Read every hyper-parameter that shapes determine from an (unwrapped) HAT state dict.

    ``conv_scale`` and ``img_range`` leave no trace in the shapes, so they are passed in.
    Raises :class:`NotHATStateDict` when the keys or shapes are not HAT's.
    """
    _tensor(state_dict, "conv_last.weight", 4)
    embed_dim, in_chans = (int(n) for n in _tensor(state_dict, "conv_first.weight", 4).shape[:2])
    depths = _depths(state_dict)
    try:
        return HATConfig(
            in_chans=in_chans,
            embed_dim=embed_dim,
            depths=depths,
            **_attention(state_dict, len(depths)),
            **_block_widths(state_dict, embed_dim),
            **_upsampler(state_dict),
            conv_scale=conv_scale,
            img_range=img_range,
            qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state_dict,
            patch_norm="patch_embed.norm.weight" in state_dict,
            resi_connection="1conv" if "layers.0.conv.weight" in state_dict else "identity",
        )
    except (ValueError, ZeroDivisionError) as exc:
        raise NotHATStateDict(str(exc)) from exc
