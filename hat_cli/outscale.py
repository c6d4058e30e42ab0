"""Output sizes other than the network's own factor: ``--outscale F``, ``--width W``, ``--height H``.

The convention of Real-ESRGAN's ``--outscale``: the network runs at its own scale, then a
high-quality resize brings the result to the size asked for. Measured on Set5 with ``hat-tiny``
(``benchmarks/bench_outscale.py``, numbers in the README, "Sizes other than the network's"):

* the resize is MATLAB's bicubic (:mod:`hat_cli.imresize`, antialiased when shrinking): it is
  within 0.01 dB of Lanczos or better at every factor measured (x2: 37.10 against 37.06 dB, x3:
  33.25 against 33.26, x8: both 26.03), and it is the arithmetic the benchmark inputs are made with;
* x8 with a x4 network is one pass and a x2 resize: running the network twice (x16, then shrinking
  by 2) scored the same (26.02 against 26.03 dB) for 17 times the compute.

:class:`OutputSize` is the request; :meth:`OutputSize.plan` gives one image's final size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ConfigError
from .imresize import imresize
from .pixels import to_levels

ResizeMethod = Literal["bicubic", "lanczos"]
DEFAULT_RESIZE: ResizeMethod = "bicubic"


def resize_array(array: np.ndarray, height: int, width: int, method: ResizeMethod = DEFAULT_RESIZE) -> np.ndarray:
    """``H x W [x C]`` uint8/uint16 pixels resized to ``height x width``, same dtype.

    ``bicubic`` is MATLAB's ``imresize`` (antialiased when shrinking, rounded once at the end);
    ``lanczos`` is Pillow's Lanczos-3 in float. Channels are resized one at a time (bounded memory).
    """
    array = np.asarray(array)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if array.shape[:2] == (height, width):
        return array.copy()
    planes = array[..., None] if array.ndim == 2 else array
    out = np.empty((height, width, planes.shape[2]), dtype=array.dtype)
    for c in range(planes.shape[2]):
        plane = planes[..., c]
        if method == "bicubic":
            resized = imresize(plane, output_shape=(height, width))
        elif method == "lanczos":
            image = Image.fromarray(plane.astype(np.float32), "F")
            resized = np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
        else:
            raise ValueError(f"unknown resize method {method!r}: use bicubic or lanczos")
        out[..., c] = to_levels(resized, array.dtype)
    return out[..., 0] if array.ndim == 2 else out


@dataclass(frozen=True)
class SizePlan:
    """For one image: the final size, and whether the network's output must be resized to it."""

    height: int
    width: int
    resize: bool


@dataclass(frozen=True)
class OutputSize:
    """What the user asked for: a factor (``outscale``), or a target width and/or height.

    ``width`` or ``height`` alone keeps the aspect ratio; both give exactly that size (the aspect
    may change, as with ``imresize(img, [h w])``). ``outscale`` cannot be combined with them.
    """

    outscale: float | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.outscale is not None:
            if not math.isfinite(self.outscale) or self.outscale <= 0:
                raise ConfigError(f"--outscale {self.outscale:g}: must be a number > 0 (e.g. 3.5 or 8)")
            if self.width is not None or self.height is not None:
                raise ConfigError("give --outscale or --width/--height, not both")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None and value < 1:
                raise ConfigError(f"--{name} {value}: must be a positive number of pixels")

    @property
    def active(self) -> bool:
        return self.outscale is not None or self.width is not None or self.height is not None

    def label(self, scale: int) -> str:
        """The ``{scale}`` of output names: the outscale (``3.5``), else the network's scale."""
        return f"{self.outscale:g}" if self.outscale is not None else str(scale)

    def target(self, height: int, width: int) -> tuple[int, int]:
        """The output ``(height, width)`` for an input of that size (``round``, at least 1 pixel)."""
        if self.outscale is not None:
            return max(1, round(height * self.outscale)), max(1, round(width * self.outscale))
        if self.width is not None and self.height is not None:
            return self.height, self.width
        if self.width is not None:
            return max(1, round(height * self.width / width)), self.width
        if self.height is not None:
            return self.height, max(1, round(width * self.height / height))
        raise ValueError("no output size requested")

    def plan(self, height: int, width: int, scale: int) -> SizePlan:
        """The final size of a ``height x width`` input run through a x``scale`` network."""
        if not self.active:
            return SizePlan(height * scale, width * scale, False)
        out_h, out_w = self.target(height, width)
        return SizePlan(out_h, out_w, (out_h, out_w) != (height * scale, width * scale))


__all__ = ["DEFAULT_RESIZE", "OutputSize", "ResizeMethod", "SizePlan", "resize_array"]
