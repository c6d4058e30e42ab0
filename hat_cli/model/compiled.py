"""``torch.compile`` for HAT inference without a recompile per image.

The network's own first step is the official reflect-pad to a window multiple, so padding
before the compiled graph changes nothing in the output, and every input of a shape bucket
(all sizes that pad to the same window multiple: 241..256 px share one) reuses one graph.
Tiled inference with equal-sized tiles therefore compiles once (plus edge tiles, if smaller).
Buckets beyond ``max_shapes`` run eagerly instead of compiling again, so a stream of odd sizes
never stalls on compilation or hits dynamo's recompile limit (8 by default).

Dynamic shapes (``dynamic=True``) were tried and still specialise on the window grid (one
graph per shape in practice), so static graphs are used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .arch import HAT
from .padding import reflect_pad_to_multiple
from .wrapper import ModelWrapper


class CompiledHAT(ModelWrapper):
    """Callable like ``HAT`` (same ``scale``, ``window_size``, ``config``), compiled per bucket."""

    def __init__(self, model: HAT, max_shapes: int = 8, mode: str | None = None) -> None:
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
        x = reflect_pad_to_multiple(x, self.window_size)
        bucket = tuple(x.shape)
        if bucket not in self._buckets and len(self._buckets) >= self.max_shapes:
            out = self.inner(x)
        else:
            self._buckets.add(bucket)
            out = self._compiled(x)
        scale = self.scale
        return out[..., : height * scale, : width * scale]
