"""HAT hyper-parameters, and how to read them back from a state dict's tensor shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

# The official architecture hard-codes these; they are written here once.
OFFICIAL_CONV_SCALE = 0.01
OFFICIAL_IMG_RANGE = 1.0
# The memory model's calibration (see HATConfig.working_values_per_pixel).
BODY_VALUES_PER_CHANNEL = 20.0
UPSAMPLER_COPIES = 2.2
SCORE_COPIES = 1.0


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
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if self.upscale not in (1, 2, 3, 4, 8):
            raise ValueError(f"upscale {self.upscale} is not supported (1, 2, 3, 4 or 8)")
        for heads in self.num_heads:
            if self.embed_dim % heads:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {heads}")

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


class NotHATStateDict(ValueError):
    """The tensors do not describe a HAT network."""


_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")


def _side_of_square(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise NotHATStateDict(f"{what} has {count} rows, not a square number")
    return side


def detect_config(
    state_dict: Mapping[str, torch.Tensor],
    conv_scale: float = OFFICIAL_CONV_SCALE,
    img_range: float = OFFICIAL_IMG_RANGE,
) -> HATConfig:
    """Read every hyper-parameter that shapes determine from an (unwrapped) HAT state dict.

    ``conv_scale`` and ``img_range`` leave no trace in the shapes, so they are passed in.
    Raises :class:`NotHATStateDict` when the keys or shapes are not HAT's.
    """
    required = ("conv_first.weight", "conv_last.weight")
    missing = [k for k in required if k not in state_dict]
    if missing or not any(_BLOCK_KEY.match(k) for k in state_dict):
        raise NotHATStateDict("no HAT tensors (conv_first, layers.N.residual_group.blocks.M, ...) found")
    if "conv_before_upsample.0.weight" not in state_dict or "upsample.0.weight" not in state_dict:
        raise NotHATStateDict("only the 'pixelshuffle' upsampler (every official HAT) is supported")

    embed_dim, in_chans = state_dict["conv_first.weight"].shape[:2]

    depth_by_layer: dict[int, int] = {}
    for key in state_dict:
        if match := _BLOCK_KEY.match(key):
            layer, block = int(match[1]), int(match[2])
            depth_by_layer[layer] = max(depth_by_layer.get(layer, 0), block + 1)
    num_layers = len(depth_by_layer)
    if sorted(depth_by_layer) != list(range(num_layers)):
        raise NotHATStateDict("residual groups are not numbered 0..N-1")
    depths = tuple(depth_by_layer[i] for i in range(num_layers))

    def block(layer: int, name: str) -> torch.Tensor:
        key = f"layers.{layer}.residual_group.blocks.0.{name}"
        if key not in state_dict:
            raise NotHATStateDict(f"missing {key}")
        return state_dict[key]

    tables = [block(i, "attn.relative_position_bias_table") for i in range(num_layers)]
    num_heads = tuple(int(t.shape[1]) for t in tables)
    window_size = (_side_of_square(tables[0].shape[0], "relative_position_bias_table") + 1) // 2

    ocab_key = "layers.0.residual_group.overlap_attn.relative_position_bias_table"
    if ocab_key not in state_dict:
        raise NotHATStateDict(f"missing {ocab_key}")
    overlap_win = _side_of_square(state_dict[ocab_key].shape[0], "OCAB bias table") - window_size + 1
    overlap_ratio = (overlap_win - window_size) / window_size

    compress_ratio = embed_dim // block(0, "conv_block.cab.0.weight").shape[0]
    squeeze_factor = embed_dim // block(0, "conv_block.cab.3.attention.1.weight").shape[0]
    mlp_hidden = block(0, "mlp.fc1.weight").shape[0]
    mlp_ratio = mlp_hidden / embed_dim
    while int(embed_dim * mlp_ratio) < mlp_hidden:  # guard against float rounding below the integer
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)

    num_feat = state_dict["conv_before_upsample.0.weight"].shape[0]
    first_up = state_dict["upsample.0.weight"].shape[0] // num_feat
    n_up = sum(1 for k in state_dict if re.fullmatch(r"upsample\.\d+\.weight", k))
    if first_up == 9:
        upscale = 3
    elif first_up == 4:
        upscale = 2**n_up
    else:
        raise NotHATStateDict(f"upsample.0 has {first_up}x channels; expected 4 (x2^n) or 9 (x3)")

    try:
        return HATConfig(
            upscale=upscale,
            in_chans=int(in_chans),
            embed_dim=int(embed_dim),
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            compress_ratio=int(compress_ratio),
            squeeze_factor=int(squeeze_factor),
            conv_scale=conv_scale,
            overlap_ratio=overlap_ratio,
            mlp_ratio=mlp_ratio,
            img_range=img_range,
            qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state_dict,
            patch_norm="patch_embed.norm.weight" in state_dict,
            resi_connection="1conv" if "layers.0.conv.weight" in state_dict else "identity",
            num_feat=int(num_feat),
        )
    except ValueError as exc:
        raise NotHATStateDict(str(exc)) from exc
