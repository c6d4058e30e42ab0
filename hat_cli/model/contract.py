"""The two contracts every network family meets: a :class:`Network` the engine can run, and a
:class:`Family` that recognises, reads and builds one from a checkpoint.

The tiling engine, the upscaler API, the store, batch, bench and the CLI speak only these
protocols, so a new family (``hat_cli/model/<family>/``) plugs in by being listed in
:data:`hat_cli.model.families.FAMILIES`, without touching any of them.

Torch-free at import: the registry (``hat models list``) reads configurations without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

# Half-precision autocast keeps normalisation and softmax in fp32: about 3 bytes per value on average.
_BYTES_PER_VALUE = {"float32": 4.0, "bfloat16": 3.0, "float16": 3.0}
ALLOCATOR_SLACK = 1.25  # fragmentation and caching on top of the live working set


def values_to_bytes(values: float, dtype: torch.dtype | None = None) -> float:
    """Peak bytes of ``values`` live activations per input pixel, under ``dtype`` autocast."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return _BYTES_PER_VALUE.get(name, 4.0) * ALLOCATOR_SLACK * values


def positive_int(name: str, value: Any) -> int:
    """A positive integer hyper-parameter (bools and floats such as 4.7 are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def finite_number(name: str, value: Any) -> float:
    """A finite real hyper-parameter, as a float (bools, strings, NaN and infinities are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@runtime_checkable
class Network(Protocol):
    """A super-resolution network the engine can run (an ``nn.Module``, or a wrapper of one).

    ``net(x)``: (B, in_channels, h, w) float in ``0..input_range`` -> (B, in_channels, scale*h,
    scale*w), called with ``h`` and ``w`` multiples of ``size_multiple`` (callers pad; see
    :func:`hat_cli.model.padding.run_padded`, which also maps 0..1 images to the input range).
    """

    @property
    def scale(self) -> int: ...

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (HAT: its window; convolutional nets: 1)."""
        ...

    @property
    def input_range(self) -> float:
        """Pixel values the network expects for white: 1.0 (HAT) or 255 (RCAN/HAN's rgb_range)."""
        ...

    @property
    def in_channels(self) -> int: ...

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        """Estimated peak working memory of one forward per input pixel (drives ``--tile auto``)."""
        ...

    def __call__(self, x: Tensor) -> Tensor: ...


class ModelConfig(Protocol):
    """A family's hyper-parameters (a frozen dataclass): what builds one network."""

    # Values that leave no trace in tensor shapes (HAT: conv_scale, img_range): they come from
    # the caller (registry preset, CLI flag), else the file's metadata, else the family default.
    HIDDEN: ClassVar[tuple[str, ...]]

    @property
    def scale(self) -> int: ...

    @property
    def num_params(self) -> int:
        """Parameter count without building the network (no torch)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


class NotThisFamily(ValueError):
    """The tensors are not (or not quite) this family's; the message says what is wrong."""


class Family(Protocol):
    """How one network family is recognised, read from shapes, and built.

    ``matches`` is a cheap look at the key names; ``detect`` reads every hyper-parameter from the
    tensor shapes (``hidden`` supplies the ones shapes cannot show) and raises
    :class:`NotThisFamily` naming what is missing or malformed; ``build`` returns a randomly
    initialised network of ``config`` (the loader builds on the meta device and loads the
    checkpoint strictly into it).
    """

    name: str  # "hat", "han", "rcan": the `arch` of a registry family table
    title: str  # for messages: "HAT"
    config_type: type[ModelConfig]  # its HIDDEN names say which values shapes cannot show

    def matches(self, state: Mapping[str, Tensor]) -> bool: ...

    def detect(self, state: Mapping[str, Tensor], hidden: Mapping[str, Any]) -> ModelConfig: ...

    def config_from_dict(self, data: Mapping[str, Any]) -> ModelConfig:
        """A config from registry/TOML keywords, ``scale`` included (unknown keys: ValueError)."""
        ...

    def build(self, config: ModelConfig) -> nn.Module: ...


__all__ = [
    "ALLOCATOR_SLACK",
    "Family",
    "ModelConfig",
    "Network",
    "NotThisFamily",
    "finite_number",
    "positive_int",
    "values_to_bytes",
]
