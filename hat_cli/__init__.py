"""hat: super-resolution with HAT (Hybrid Attention Transformer) from the command line and Python.

>>> from hat_cli import Upscaler
>>> upscaler = Upscaler.from_preset("hat-s", scale=4)
>>> upscaler.upscale(PIL.Image.open("photo.png")).save("photo_x4.png")
"""

from .api import Upscaler, open_upscaler
from .errors import CheckpointError, ConfigError, HatError, InputImageError, ModelNotAvailable
from .model import HAT, HATConfig

__version__ = "0.1.0"

__all__ = [
    "HAT",
    "CheckpointError",
    "ConfigError",
    "HATConfig",
    "HatError",
    "InputImageError",
    "ModelNotAvailable",
    "Upscaler",
    "open_upscaler",
]
