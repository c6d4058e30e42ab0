"""HAT (Chen et al., CVPR 2023): configuration, shape detection, the network and its family."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import HATConfig, NotHATStateDict, detect_config
from .family import HAT_FAMILY, HATFamily

if TYPE_CHECKING:
    from .arch import HAT


def __getattr__(name: str) -> Any:
    if name == "HAT":  # the network (and torch) loads on first use: the registry needs configs only
        from .arch import HAT

        return HAT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HAT", "HAT_FAMILY", "HATConfig", "HATFamily", "NotHATStateDict", "detect_config"]
