"""``torch.compile`` for inference without a recompile per image.

Callers pad inputs to the network's size multiple (HAT: the official reflect-pad to a window
multiple), so every input of a shape bucket (all sizes that pad to the same multiple: 241..256 px
share one for a 16-pixel window) reuses one graph.
Tiled inference with equal-sized tiles therefore compiles once: the tiler keeps every tile of an
image the same size (edge tiles are shifted inward), and a batch smaller than one already compiled
for the same tile (the last chunk of a grid row) is padded with copies of its last tile and cut
back, instead of compiling a graph for it (each image of a batch is computed independently).
Buckets are kept per autocast precision too (the fp32 recomputation of a non-finite half-precision
tile is a different graph). Buckets beyond ``max_shapes`` run eagerly instead of compiling again, so
a stream of odd sizes never stalls on compilation or hits dynamo's recompile limit (8 by default).

Dynamic shapes (``dynamic=True``) were tried and still specialise on the window grid (one
graph per shape in practice), so static graphs are used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import autocast_dtype
from .padding import reflect_pad_to_multiple
from .wrapper import ModelWrapper

Bucket = tuple[tuple[int, ...], torch.dtype | None]  # padded (B, C, H, W), autocast dtype (None: off)


class CompiledNetwork(ModelWrapper):
    """A network compiled once per padded input shape (any family; outputs unchanged).

    ``pad_batch``: run a smaller batch through an already compiled larger one of the same tile
    shape (padding with copies of its last image) rather than compiling another graph.
    """

    def __init__(self, model: nn.Module, max_shapes: int = 8, mode: str | None = None, pad_batch: bool = True) -> None:
        super().__init__(model)
        self.max_shapes = max_shapes
        self.pad_batch = pad_batch
        self._compiled = torch.compile(model, dynamic=False, mode=mode)
        self._buckets: set[Bucket] = set()

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, ...]]:
        """The padded (B, C, H, W) input shapes that have a compiled graph."""
        return frozenset(shape for shape, _ in self._buckets)

    def _padded_batch(self, bucket: Bucket) -> int | None:
        """The smallest compiled batch larger than ``bucket``'s for the same tile and precision."""
        (count, *rest), dtype = bucket
        larger = [shape[0] for shape, d in self._buckets if d == dtype and list(shape[1:]) == rest and shape[0] > count]
        return min(larger, default=None)

    def __call__(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, sH, sW), exactly ``model(x)``."""
        height, width = x.shape[-2:]
        count = x.shape[0]
        x = reflect_pad_to_multiple(x, self.size_multiple)
        bucket: Bucket = (tuple(x.shape), autocast_dtype(x.device.type))
        if bucket not in self._buckets and self.pad_batch:
            batch = self._padded_batch(bucket)
            if batch is not None:
                x = torch.cat([x, x[-1:].expand(batch - count, *x.shape[1:])])
                bucket = (tuple(x.shape), bucket[1])
        if bucket not in self._buckets and len(self._buckets) >= self.max_shapes:
            out = self.inner(x)
        else:
            self._buckets.add(bucket)
            out = self._compiled(x)
        scale = self.scale
        return out[:count, ..., : height * scale, : width * scale]
