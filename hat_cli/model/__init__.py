"""Network families and the contracts the engine runs them through (imports only torch and einops).

- :mod:`.contract`: the ``Network`` and ``Family`` protocols;
- :mod:`.families`: the families a checkpoint is offered to;
- :mod:`.hat`: HAT (one package per family);
- :mod:`.layers`, :mod:`.padding`: shared building blocks;
- :mod:`.wrapper`, :mod:`.compiled`, :mod:`.ensemble`: runners that stand in for a network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contract import Family, ModelConfig, Network, NotThisFamily
from .families import FAMILIES, family_named, find_family
from .hat import HATConfig, NotHATStateDict, detect_config

if TYPE_CHECKING:
    from .hat.arch import HAT


def __getattr__(name: str) -> Any:
    # The network (and torch) loads on first use: the registry only needs configurations.
    if name == "HAT":
        from .hat.arch import HAT

        return HAT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "HAT",
    "Family",
    "HATConfig",
    "ModelConfig",
    "Network",
    "NotHATStateDict",
    "NotThisFamily",
    "detect_config",
    "family_named",
    "find_family",
]
