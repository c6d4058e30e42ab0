"""``torch.compile`` for inference without a recompile per image.

Callers pad inputs to the network's size multiple (HAT: the official reflect-pad to a window
multiple), so every input of a shape bucket (all sizes that pad to the same multiple: 241..256 px
share one for a 16-pixel window) reuses one graph.
Tiled inference with equal-sized tiles therefore compiles once (plus edge tiles, if smaller).
Buckets beyond ``max_shapes`` run eagerly instead of compiling again, so a stream of odd sizes
never stalls on compilation or hits dynamo's recompile limit (8 by default).

Dynamic shapes (``dynamic=True``) were tried and still specialise on the window grid (one
graph per shape in practice), so static graphs are used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .padding import reflect_pad_to_multiple
from .wrapper import ModelWrapper


class CompiledNetwork(ModelWrapper):
    """A network compiled once per padded input shape (any family; outputs unchanged)."""

    def __init__(self, model: nn.Module, max_shapes: int = 8, mode: str | None = None) -> None:
        super().__init__(model)
        self.max_shapes = max_shapes
        self._compiled = torch.compile(model, dynamic=False, mode=mode)
        self._buckets: set[tuple[int, ...]] = set()

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, ...]]:
        """The padded (B, C, H, W) input shapes that have a compiled graph."""
        return frozenset(self._buckets)

    def __call__(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, sH, sW), exactly ``model(x)``."""
        height, width = x.shape[-2:]
        x = reflect_pad_to_multiple(x, self.size_multiple)
        bucket = tuple(x.shape)
        if bucket not in self._buckets and len(self._buckets) >= self.max_shapes:
            out = self.inner(x)
        else:
            self._buckets.add(bucket)
            out = self._compiled(x)
        scale = self.scale
        return out[..., : height * scale, : width * scale]
