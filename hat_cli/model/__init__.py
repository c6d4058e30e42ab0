"""HAT network and its configuration (imports only torch and einops)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import HATConfig, NotHATStateDict, detect_config

if TYPE_CHECKING:
    from .arch import HAT


def __getattr__(name: str) -> Any:
    # The network (and torch) loads on first use: the registry only needs HATConfig.
    if name == "HAT":
        from .arch import HAT

        return HAT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HAT", "HATConfig", "NotHATStateDict", "detect_config"]
