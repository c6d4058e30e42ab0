"""RCAN and HAN: residual channel attention networks and their holistic-attention successor.

Torch-free at import: configurations, detection and the family objects need no torch; the
networks (``RCAN``, ``HAN`` and the attention modules) load with torch on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DEFAULT_RGB_RANGE, HANConfig, RCANConfig, detect_han, detect_rcan
from .family import HAN_FAMILY, RCAN_FAMILY

if TYPE_CHECKING:
    from .arch import HAN, RCAN, ChannelSpatialAttention, LayerAttention

_NETWORK_NAMES = ("HAN", "RCAN", "ChannelSpatialAttention", "LayerAttention")


def __getattr__(name: str) -> Any:
    if name in _NETWORK_NAMES:
        from . import arch

        return getattr(arch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_RGB_RANGE",
    "HAN",
    "HAN_FAMILY",
    "RCAN",
    "RCAN_FAMILY",
    "ChannelSpatialAttention",
    "HANConfig",
    "LayerAttention",
    "RCANConfig",
    "detect_han",
    "detect_rcan",
]
