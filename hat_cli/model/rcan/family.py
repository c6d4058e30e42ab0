"""The RCAN and HAN families: how each is recognised from key names, read from shapes, and built.

Torch-free at import (the registry reads configurations without torch); ``build`` imports the
network module on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .config import HANConfig, RCANConfig, detect_han, detect_rcan

if TYPE_CHECKING:
    from torch import Tensor, nn

# Keys only HAN has: layer attention, channel-spatial attention, and the two fusion convs.
HAN_PREFIXES = ("la.", "csa.", "last_conv.", "last.")
# An RCAB's channel attention inside a residual group: what tells RCAN from EDSR (body.N.body.M.weight).
_RCAB_KEY = re.compile(r"body\.\d+\.body\.\d+\.body\.3\.conv_du\.")


def has_han_keys(state: Mapping[str, Any]) -> bool:
    return any(key.startswith(HAN_PREFIXES) for key in state)


def has_rcan_backbone(state: Mapping[str, Any]) -> bool:
    """``head.0.weight``, residual groups of RCABs (``body.N.body.M.body.3.conv_du``) and a ``tail``."""
    return (
        "head.0.weight" in state
        and any(_RCAB_KEY.match(key) for key in state)
        and any(key.startswith("tail.") for key in state)
    )


class _ResidualAttentionFamily:
    """One of RCAN/HAN (same backbone, same config fields)."""

    def __init__(
        self,
        name: str,
        title: str,
        config_type: type[RCANConfig],
        matcher: Callable[[Mapping[str, Any]], bool],
        detector: Callable[[Mapping[str, Any], Mapping[str, Any]], RCANConfig],
    ) -> None:
        self.name = name
        self.title = title
        self.config_type = config_type  # its HIDDEN names the values shapes cannot show
        self._matcher = matcher
        self._detector = detector

    def __repr__(self) -> str:
        return f"<{self.title} family>"

    def matches(self, state: Mapping[str, Tensor]) -> bool:
        return self._matcher(state)

    def detect(self, state: Mapping[str, Tensor], hidden: Mapping[str, Any]) -> RCANConfig:
        return self._detector(state, hidden)

    def config_from_dict(self, data: Mapping[str, Any]) -> RCANConfig:
        """A config from registry/TOML keywords. An ``arch`` key must name this family; any other
        unknown key is an error (a typo must not silently build the default network)."""
        known = {f.name for f in fields(self.config_type)}
        unknown = sorted(set(data) - known - {"arch"})
        if unknown:
            raise ValueError(f"unknown {self.title} keys {unknown}; expected some of {sorted(known)}")
        if data.get("arch", self.name) != self.name:
            raise ValueError(f"arch {data['arch']!r} is not {self.name!r}")
        return self.config_type(**{k: v for k, v in data.items() if k != "arch"})

    def build(self, config: RCANConfig) -> nn.Module:
        # Exact type: a HANConfig is an RCANConfig subclass, but must not build an RCAN.
        if type(config) is not self.config_type:
            raise TypeError(f"{self.title} builds from a {self.config_type.__name__}, not {type(config).__name__}")
        from .arch import build_network

        return build_network(config)


def _is_rcan(state: Mapping[str, Any]) -> bool:
    return has_rcan_backbone(state) and not has_han_keys(state)


RCAN_FAMILY = _ResidualAttentionFamily("rcan", "RCAN", RCANConfig, _is_rcan, detect_rcan)
HAN_FAMILY = _ResidualAttentionFamily("han", "HAN", HANConfig, has_han_keys, detect_han)

__all__ = ["HAN_FAMILY", "HAN_PREFIXES", "RCAN_FAMILY", "has_han_keys", "has_rcan_backbone"]
