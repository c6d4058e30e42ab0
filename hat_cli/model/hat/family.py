"""HAT as a :class:`~hat_cli.model.contract.Family` (torch-free until :meth:`HATFamily.build`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import _BLOCK_KEY, OFFICIAL_CONV_SCALE, OFFICIAL_IMG_RANGE, HATConfig, detect_config

if TYPE_CHECKING:
    from torch import Tensor

    from .arch import HAT


class HATFamily:
    """HAT, HAT-S, HAT-L, Real-HAT-GAN and community HAT files (pixel-shuffle upsampler)."""

    name = "hat"
    title = "HAT"
    config_type = HATConfig

    def matches(self, state: Mapping[str, Tensor]) -> bool:
        return "conv_first.weight" in state and any(_BLOCK_KEY.match(key) for key in state)

    def detect(self, state: Mapping[str, Tensor], hidden: Mapping[str, Any]) -> HATConfig:
        return detect_config(
            state,
            conv_scale=hidden.get("conv_scale", OFFICIAL_CONV_SCALE),
            img_range=hidden.get("img_range", OFFICIAL_IMG_RANGE),
        )

    def config_from_dict(self, data: Mapping[str, Any]) -> HATConfig:
        """Official ``HAT.__init__`` keywords; ``scale`` is accepted for ``upscale``."""
        data = dict(data)
        if "scale" in data:
            data["upscale"] = data.pop("scale")
        config = HATConfig.from_dict(data)
        if config.extra:
            raise ValueError(f"unknown HAT keys {sorted(config.extra)}")
        return config

    def build(self, config: HATConfig) -> HAT:
        from .arch import HAT

        return HAT(config)


HAT_FAMILY = HATFamily()
