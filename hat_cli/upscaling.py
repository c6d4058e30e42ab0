"""The upscaler contract: what the CLI, batch, bench and the cluster engine may ask of an upscaler.

Two implementations: :class:`hat_cli.api.Upscaler` (a network, tiled) and
:class:`hat_cli.baseline.BicubicUpscaler` (MATLAB bicubic, the papers' baseline). Torch-free at
import, so batch and the CLI can hold an upscaler type without loading torch.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from .tiling import TileStats

Progress = Callable[[int, int], None]  # (tiles done, tiles total)


def upscaler_name(name: str, self_ensemble: bool = False) -> str:
    """An upscaler's display name: ``+`` marks the x8 self-ensemble, as in the papers (EDSR+, RCAN+)."""
    return (name or "custom") + ("+" if self_ensemble else "")


def folder_name(name: str) -> str:
    """An upscaler's name as one folder name (``hat bench --save-sr``, ``hat lam`` with several
    models): characters other than ``A-Z a-z 0-9 . _ + -`` become ``_``; never empty, ``.`` or ``..``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "model"


class UpscalerBase(ABC):
    """An upscaler by a fixed integer factor: implement :attr:`scale` and :meth:`upscale_tensor`;
    override :meth:`upscale_array` where integer images have a better path.

    Hooks for callers that do not call the ``upscale*`` methods themselves (the CLI's batch
    pipeline): :attr:`progress` is used when a call passes none; :attr:`on_stats` hears how each
    image was run (upscalers without tiles never call it).
    """

    name: str = ""
    progress: Progress | None = None
    on_stats: Callable[[TileStats], None] | None = None

    @property
    @abstractmethod
    def scale(self) -> int: ...

    def upscale_array(self, array: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """H x W x C (or H x W) uint8/uint16 pixels -> the same layout and dtype, ``scale`` times larger.

        This default goes through :meth:`upscale_tensor` on a float copy of the whole image;
        implementations with a bounded-memory path override it.
        """
        from .pixels import check_pixel_type, quantize, to_tensor

        dtype = check_pixel_type(np.asarray(array).dtype)
        out = quantize(self.upscale_tensor(to_tensor(array)[None], progress)[0], dtype)
        return out[..., 0] if np.ndim(array) == 2 else out

    @abstractmethod
    def upscale_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(B, C, H, W) float in 0..1 -> (B, C, sH, sW) float32 (unclipped), on the input's device."""

    def upscale(self, image: Any, progress: Progress | None = None) -> Any:
        """A PIL image (-> RGB PIL image), an H x W x 3 uint8/uint16 array, or a (B, 3, H, W) tensor."""
        if isinstance(image, Image.Image):
            return Image.fromarray(self.upscale_array(np.asarray(image.convert("RGB")), progress))
        if isinstance(image, np.ndarray):
            return self.upscale_array(image, progress)
        return self.upscale_tensor(image, progress)


__all__ = ["Progress", "UpscalerBase", "upscaler_name"]
