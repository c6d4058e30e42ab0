"""Base of the callables that stand in for a ``HAT`` at inference (compiled, self-ensemble)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .config import HATConfig


class ModelWrapper:
    """Forwards ``scale``, ``window_size`` and ``config`` of the wrapped network (or wrapper), so
    the tiling engine treats every wrapper like the ``HAT`` itself."""

    def __init__(self, inner: Callable[[Tensor], Tensor]) -> None:
        self.inner = inner

    @property
    def scale(self) -> int:
        return self.inner.scale

    @property
    def window_size(self) -> int:
        return self.inner.window_size

    @property
    def config(self) -> HATConfig:
        return self.inner.config

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError
