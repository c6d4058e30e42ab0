"""Base of the runners that stand in for a network at inference (compiled, self-ensemble)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    import torch

    from .contract import Network


class ModelWrapper:
    """A :class:`~hat_cli.model.contract.Network` that forwards the contract's properties to the
    network (or wrapper) it wraps, so the engine runs every wrapper like the network itself and
    the memory model sees what actually runs."""

    def __init__(self, inner: Network) -> None:
        self.inner = inner

    @property
    def scale(self) -> int:
        return self.inner.scale

    @property
    def size_multiple(self) -> int:
        return self.inner.size_multiple

    @property
    def input_range(self) -> float:
        return self.inner.input_range

    @property
    def in_channels(self) -> int:
        return self.inner.in_channels

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return self.inner.bytes_per_input_pixel(dtype)

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError
