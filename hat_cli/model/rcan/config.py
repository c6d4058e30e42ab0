"""RCAN and HAN hyper-parameters, their exact parameter layout, and how to read them back from shapes.

Torch-free: the registry imports configurations without torch. Names follow the official
``args`` of yulunzhang/RCAN and wwlCape/HAN (``n_feats``, ``n_resgroups``, ``n_resblocks``, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..contract import NotThisFamily, finite_number, positive_int

DEFAULT_RGB_RANGE = 255.0  # every official RCAN/HAN model was trained on 0..255 images
UNIT_RANGE_MAX_MEAN = 1.5  # add_mean biases up to this mean a model trained on 0..1 (see _rgb_range)
SCALES = (2, 3, 4, 8)
# Sanity bounds: far above any published model, low enough that a corrupt file is refused
# before thousands of modules are built.
MAX_FEATS = 4096
MAX_GROUPS = 256
MAX_BLOCKS = 256

# The memory model's calibration (see RCANConfig.working_values_per_pixel), from
# ``benchmarks/bench_memory_rcan.py --fit``: per-stage least squares on the peak RSS rise of fp32 CPU
# forwards (64 and 128 px tiles, live set), rounded up; UPSAMPLER_COPIES raised from the fitted 2.07
# so that prediction * ALLOCATOR_SLACK also covers glibc's default allocator (HAN x3: +34% over live).
FIXED_VALUES = 64.0  # per pixel of a 128 px tile: what one forward allocates whatever the tile size
BODY_COPIES = 4.8  # per n_feats: head skip, group skip, an RCAB's input, convs and attention product
LAYER_STACK_COPIES = 1.2  # HAN, per n_feats * (n_resgroups + 1): the stacked body outputs, plus a little
UPSAMPLER_COPIES = 2.2  # per n_feats * scale^2: the last stage's input, conv output and pixel-shuffled copy
OUTPUT_COPIES = 5.0  # per n_colors * scale^2: the last conv, add_mean, and oneDNN's copies of them

Shape = tuple[int, ...]


def _conv(name: str, cin: int, cout: int, kernel: int = 3) -> Iterator[tuple[str, Shape]]:
    """The two tensors of a biased ``nn.Conv2d`` called ``name``."""
    yield f"{name}.weight", (cout, cin, kernel, kernel)
    yield f"{name}.bias", (cout,)


def upsampler_stages(scale: int) -> tuple[int, ...]:
    """Channel multiplier of each EDSR upsampler conv: 4 per x2 stage (x2, x4, x8), or one 9 (x3)."""
    return (9,) if scale == 3 else (4,) * int(math.log2(scale))


@dataclass(frozen=True)
class RCANConfig:
    """Everything needed to build an RCAN (Zhang et al., ECCV 2018); defaults are the paper's."""

    HIDDEN: ClassVar[tuple[str, ...]] = ("rgb_range",)

    scale: int = 4
    n_feats: int = 64
    n_resgroups: int = 10
    n_resblocks: int = 20
    reduction: int = 16
    n_colors: int = 3
    rgb_range: float = DEFAULT_RGB_RANGE

    def __post_init__(self) -> None:
        for name in ("scale", "n_feats", "n_resgroups", "n_resblocks", "reduction", "n_colors"):
            positive_int(name, getattr(self, name))
        object.__setattr__(self, "rgb_range", finite_number("rgb_range", self.rgb_range))
        self._validate()

    def _validate(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale {self.scale} is not supported (2, 3, 4 or 8)")
        bounds = {"n_feats": MAX_FEATS, "n_resgroups": MAX_GROUPS, "n_resblocks": MAX_BLOCKS, "n_colors": 16}
        for name, limit in bounds.items():
            if not 1 <= getattr(self, name) <= limit:
                raise ValueError(f"{name} {getattr(self, name)} is outside 1..{limit}")
        if not 1 <= self.reduction <= self.n_feats:
            raise ValueError(f"reduction {self.reduction} is outside 1..n_feats ({self.n_feats})")
        if self.rgb_range <= 0:
            raise ValueError(f"rgb_range {self.rgb_range} must be positive")

    @property
    def squeezed(self) -> int:
        """Width of the channel attention's bottleneck (``n_feats // reduction`` as officially)."""
        return self.n_feats // self.reduction

    def param_shapes(self) -> dict[str, Shape]:
        """Every tensor of the official state dict and its shape, in module order."""
        return dict(self._shapes())

    def _shapes(self) -> Iterator[tuple[str, Shape]]:
        colors, feats = self.n_colors, self.n_feats
        yield from _conv("sub_mean", colors, colors, 1)
        yield from _conv("head.0", colors, feats)
        for group in range(self.n_resgroups):
            yield from self._group_shapes(f"body.{group}")
        yield from _conv(f"body.{self.n_resgroups}", feats, feats)
        yield from self._tail_shapes()
        yield from _conv("add_mean", colors, colors, 1)

    def _group_shapes(self, prefix: str) -> Iterator[tuple[str, Shape]]:
        feats = self.n_feats
        for block in range(self.n_resblocks):
            rcab = f"{prefix}.body.{block}.body"
            yield from _conv(f"{rcab}.0", feats, feats)
            yield from _conv(f"{rcab}.2", feats, feats)
            yield from _conv(f"{rcab}.3.conv_du.0", feats, self.squeezed, 1)
            yield from _conv(f"{rcab}.3.conv_du.2", self.squeezed, feats, 1)
        yield from _conv(f"{prefix}.body.{self.n_resblocks}", feats, feats)

    def _tail_shapes(self) -> Iterator[tuple[str, Shape]]:
        for stage, factor in enumerate(upsampler_stages(self.scale)):
            yield from _conv(f"tail.0.{2 * stage}", self.n_feats, factor * self.n_feats)
        yield from _conv("tail.1", self.n_feats, self.n_colors)

    @property
    def num_params(self) -> int:
        """Parameter count of the network this config builds (MeanShift convs included), without torch."""
        return sum(math.prod(shape) for shape in self.param_shapes().values())

    def body_values_per_pixel(self) -> float:
        """Peak live values per input pixel while head and body run."""
        return BODY_COPIES * self.n_feats

    def upsampler_values_per_pixel(self) -> float:
        """Peak live values per input pixel while the tail runs (at the output resolution)."""
        return (UPSAMPLER_COPIES * self.n_feats + OUTPUT_COPIES * self.n_colors) * self.scale**2

    def working_values_per_pixel(self) -> float:
        """Peak live float values of one forward per input pixel (the ``--tile auto`` memory model).

        The body and the upsampler run one after the other and what the body frees (large blocks go
        back to the system) serves the upsampler, so the peak is the larger of the two: measured
        HAN x4 peaks equal RCAN x4's although HAN's body holds N more maps. A fixed per-forward
        cost, spread over a 128 px tile, comes on top (an overestimate for larger tiles).
        """
        return FIXED_VALUES + max(self.body_values_per_pixel(), self.upsampler_values_per_pixel())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HANConfig(RCANConfig):
    """Everything needed to build a HAN (Niu et al., ECCV 2020): RCAN plus layer and channel-spatial
    attention. The official code hard-wires 10 groups (``n_feats * 11`` channels into ``last_conv``);
    here the layer attention stacks ``n_resgroups + 1`` body outputs, which is the same for 10."""

    @property
    def n_layers(self) -> int:
        """Body outputs the layer attention weighs: every residual group and the body's final conv."""
        return self.n_resgroups + 1

    def _shapes(self) -> Iterator[tuple[str, Shape]]:
        yield from super()._shapes()
        yield "csa.gamma", (1,)
        yield "csa.conv.weight", (1, 1, 3, 3, 3)
        yield "csa.conv.bias", (1,)
        yield "la.gamma", (1,)
        yield from _conv("last_conv", self.n_feats * self.n_layers, self.n_feats)
        yield from _conv("last", 2 * self.n_feats, self.n_feats)

    def body_values_per_pixel(self) -> float:
        """RCAN's body plus the N stacked body outputs the layer attention reads."""
        return super().body_values_per_pixel() + LAYER_STACK_COPIES * self.n_feats * self.n_layers


# --------------------------------------------------------------------------- detection from shapes


def _shape(state: Mapping[str, Any], key: str, why: str = "") -> Shape:
    if key not in state:
        raise NotThisFamily(f"missing {key}{': ' + why if why else ''}")
    return tuple(int(n) for n in state[key].shape)


def _index(text: str, key: str) -> int:
    if not text.isdigit():
        raise NotThisFamily(f"{key}: {text!r} is not a module index")
    return int(text)


def _count(indices: set[int], what: str, limit: int) -> int:
    """How many modules ``indices`` number, refusing gaps and absurd counts before anything is built."""
    count = len(indices)
    if count > limit or max(indices, default=-1) >= limit:
        raise NotThisFamily(f"{what}: index {max(indices)} is beyond any real model (at most {limit})")
    if max(indices, default=-1) != count - 1:
        raise NotThisFamily(f"{what} are not numbered 0..{count - 1}: found {sorted(indices)[:12]}")
    return count


def _features(state: Mapping[str, Any]) -> tuple[int, int]:
    """(n_feats, n_colors) from the head conv."""
    shape = _shape(state, "head.0.weight", "no RCAN head conv")
    if len(shape) != 4 or shape[2:] != (3, 3):
        raise NotThisFamily(f"head.0.weight has shape {shape}, expected (n_feats, n_colors, 3, 3)")
    feats, colors = shape[:2]
    if not 1 <= feats <= MAX_FEATS:
        raise NotThisFamily(f"head.0.weight has {feats} output channels, beyond any real model")
    return feats, colors


def _body_indices(state: Mapping[str, Any]) -> tuple[dict[int, set[int]], set[int]]:
    """Block indices per residual group (``body.G.body.B.*``), and the other body modules (``body.N.*``)."""
    groups: dict[int, set[int]] = {}
    convs: set[int] = set()
    for key in state:
        if not key.startswith("body."):
            continue
        parts = key.split(".")
        index = _index(parts[1], key)
        if len(parts) > 3 and parts[2] == "body":
            groups.setdefault(index, set()).add(_index(parts[3], key))
        else:
            convs.add(index)
    return groups, convs


def _body_layout(state: Mapping[str, Any]) -> tuple[int, int]:
    """(n_resgroups, n_resblocks): groups body.0..G-1 of blocks 0..B-1 plus their conv B, then conv body.G."""
    groups, convs = _body_indices(state)
    if not groups:
        raise NotThisFamily("no residual groups (body.G.body.B.*) found")
    n_groups = _count(set(groups) | convs, "body modules", MAX_GROUPS + 1) - 1
    if convs != {n_groups}:
        raise NotThisFamily(f"expected groups body.0..{n_groups - 1} and the final conv body.{n_groups}")
    per_group = {g: _count(blocks, f"blocks of body.{g}", MAX_BLOCKS + 1) - 1 for g, blocks in groups.items()}
    if len(set(per_group.values())) != 1:
        raise NotThisFamily(f"residual groups hold different numbers of blocks: {per_group}")
    n_blocks = per_group[0]
    if n_blocks < 1:
        raise NotThisFamily("residual groups hold no RCAB")
    return n_groups, n_blocks


_UPSAMPLER_CONV = re.compile(r"tail\.0\.(\d+)\.weight")


def _scale(state: Mapping[str, Any], feats: int) -> int:
    """The upscale factor from the EDSR upsampler ``tail.0``: (conv, PixelShuffle) pairs."""
    convs = sorted(int(m[1]) for k in state if (m := _UPSAMPLER_CONV.fullmatch(k)))
    if not convs:
        raise NotThisFamily("unknown upsampler layout: no tail.0.N.weight (EDSR upsampler convs)")
    if convs != list(range(0, 2 * len(convs), 2)):
        raise NotThisFamily(f"unknown upsampler layout: convs at tail.0.{convs}, expected tail.0.0, tail.0.2, ...")
    outs = [_shape(state, f"tail.0.{i}.weight")[0] for i in convs]
    factors = [out / feats for out in outs]
    if factors == [9.0]:
        return 3
    if factors == [4.0] * len(factors) and 2 ** len(factors) in SCALES:
        return 2 ** len(factors)
    raise NotThisFamily(
        f"unknown upsampler layout: tail.0 convs give {outs} channels for n_feats {feats}; expected "
        "4 * n_feats per x2 stage (x2, x4, x8) or one 9 * n_feats (x3)"
    )


def _reduction(state: Mapping[str, Any], feats: int) -> int:
    """Channel attention reduction. Shapes only show ``n_feats // reduction``; every reduction giving
    the same bottleneck builds the same network, and the largest one is the exact divisor when one exists."""
    squeezed = _shape(state, "body.0.body.0.body.3.conv_du.0.weight", "no channel attention in the first RCAB")[0]
    if not 1 <= squeezed <= feats:
        raise NotThisFamily(f"channel attention bottleneck of {squeezed} channels for n_feats {feats}")
    return feats // squeezed


def _rgb_range(state: Mapping[str, Any], hidden: Mapping[str, Any]) -> float:
    """The pixel range the network was trained on: given (metadata), else read from ``add_mean``,
    a MeanShift (weight ``I / std``, bias ``rgb_range * mean / std``): bias over the weight's
    diagonal is ``rgb_range`` times the training set's mean colour (0.4-0.5), about 110 on 0..255
    and under 1 on 0..1. Without a readable mean shift (none, or shapes only): 255."""
    value = hidden.get("rgb_range")
    if value is not None:
        return finite_number("rgb_range", value)
    bias, weight = state.get("add_mean.bias"), state.get("add_mean.weight")
    if bias is None or weight is None or bias.is_meta or weight.is_meta or weight.numel() != bias.numel() ** 2:
        return DEFAULT_RGB_RANGE
    std_inverse = weight.reshape(bias.numel(), bias.numel()).diagonal().abs()
    if not bias.numel() or bool((std_inverse == 0).any()):
        return DEFAULT_RGB_RANGE
    largest = float((bias.abs() / std_inverse).max())
    return 1.0 if 0.0 < largest <= UNIT_RANGE_MAX_MEAN else DEFAULT_RGB_RANGE


def _check_tensors(state: Mapping[str, Any], config: RCANConfig) -> None:
    """Every expected tensor present with its shape, and nothing else."""
    expected = config.param_shapes()
    title = type(config).__name__.removesuffix("Config")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise NotThisFamily(f"not an {title} state dict: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise NotThisFamily(f"{key} has shape {tuple(state[key].shape)}, expected {shape} for {config}")


def _read_config(state: Mapping[str, Any], hidden: Mapping[str, Any], cls: type[RCANConfig]) -> RCANConfig:
    feats, colors = _features(state)
    groups, blocks = _body_layout(state)
    try:
        return cls(
            scale=_scale(state, feats),
            n_feats=feats,
            n_resgroups=groups,
            n_resblocks=blocks,
            reduction=_reduction(state, feats),
            n_colors=colors,
            rgb_range=_rgb_range(state, hidden),
        )
    except NotThisFamily:
        raise
    except ValueError as exc:
        raise NotThisFamily(str(exc)) from exc


def detect_rcan(state: Mapping[str, Any], hidden: Mapping[str, Any]) -> RCANConfig:
    """Read every RCAN hyper-parameter from key names and shapes; ``hidden`` may give ``rgb_range``.

    Raises :class:`NotThisFamily` naming what is missing or malformed.
    """
    han_keys = [k for k in ("la.gamma", "csa.gamma", "last_conv.weight", "last.weight") if k in state]
    if han_keys:
        raise NotThisFamily(f"{han_keys[0]} belongs to HAN, not RCAN")
    config = _read_config(state, hidden, RCANConfig)
    _check_tensors(state, config)
    return config


# The HAN-only tensors, each with what its absence means.
_HAN_PARTS = {
    "la.gamma": "a HAN checkpoint without its layer attention",
    "csa.gamma": "a HAN checkpoint without its channel-spatial attention",
    "csa.conv.weight": "a HAN checkpoint without its channel-spatial attention",
    "last_conv.weight": "a HAN checkpoint without the conv after its layer attention",
    "last.weight": "a HAN checkpoint without the conv fusing its two attentions",
}


def _check_layer_stack(state: Mapping[str, Any], config: HANConfig) -> None:
    channels = _shape(state, "last_conv.weight")[1]
    if channels != config.n_feats * config.n_layers:
        raise NotThisFamily(
            f"last_conv takes {channels} channels, but the layer attention stacks {config.n_layers} body "
            f"outputs of {config.n_feats} channels ({config.n_feats * config.n_layers})"
        )


def detect_han(state: Mapping[str, Any], hidden: Mapping[str, Any]) -> HANConfig:
    """Read every HAN hyper-parameter from key names and shapes; ``hidden`` may give ``rgb_range``.

    Raises :class:`NotThisFamily` naming what is missing or malformed.
    """
    for key, why in _HAN_PARTS.items():
        if key not in state:
            raise NotThisFamily(f"missing {key}: {why}")
    config = _read_config(state, hidden, HANConfig)
    assert isinstance(config, HANConfig)
    _check_layer_stack(state, config)
    _check_tensors(state, config)
    return config


__all__ = [
    "DEFAULT_RGB_RANGE",
    "HANConfig",
    "RCANConfig",
    "detect_han",
    "detect_rcan",
    "upsampler_stages",
]
