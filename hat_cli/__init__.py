"""hat: super-resolution with HAT (Hybrid Attention Transformer) from the command line and Python.

>>> from hat_cli import Upscaler
>>> upscaler = Upscaler.from_preset("hat-s", scale=4)
>>> upscaler.upscale(PIL.Image.open("photo.png")).save("photo_x4.png")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError, HatError, InputImageError, ModelNotAvailable
from .version import __version__

if TYPE_CHECKING:
    from .api import Upscaler, open_upscaler
    from .model import HAT, HATConfig


# Importing torch takes seconds; commands that never run a model (``hat models list``,
# ``--help``) should not pay for it, so the torch-backed names load on first use (PEP 562).
_LAZY = {"Upscaler": "api", "open_upscaler": "api", "HAT": "model", "HATConfig": "model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HAT",
    "CheckpointError",
    "ConfigError",
    "HATConfig",
    "HatError",
    "InputImageError",
    "ModelNotAvailable",
    "Upscaler",
    "__version__",
    "open_upscaler",
]
