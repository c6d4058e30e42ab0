"""Which upscaler ``--model``/``--weights``/``--scale`` name: the one decision every engine shares.

:func:`choose_model` resolves the options to a :class:`ModelChoice` (its name and scale, and the
preset or file behind it) without building any network: the local engine builds from it
(:func:`hat_cli.api.open_upscaler`), the Ray driver names the outputs from it and hands it to the
actors, and ``--dry-run`` needs nothing more. Torch-free for presets and ``bicubic``; a weights file
is read (not built) to learn its scale.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DownloadError, ModelNotAvailable
from .registry import Preset, Registry, load_registry

DEFAULT_MODEL_ENV = "HAT_MODEL"
DEFAULT_FAMILY = "hat"
DEFAULT_SCALE = 4  # Real-ESRGAN's and the ncnn upscalers' default: x4 whenever the model has one
OFFLINE_MODEL = "hat-tiny"  # bundled in the package: works with no download at all
BICUBIC = "bicubic"


@dataclass(frozen=True)
class ModelChoice:
    """What the options name: ``bicubic``, a registry ``preset``, or a ``weights`` file."""

    name: str  # the upscaler's name (without the self-ensemble "+")
    scale: int
    preset: Preset | None = None
    weights: Path | None = None
    hidden: dict[str, Any] = field(default_factory=dict)  # a file's --conv-scale/--img-range overrides
    # A file's tensors, family and config as read to learn its scale: building reuses them (one read).
    loaded: tuple[Any, Any, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def is_bicubic(self) -> bool:
        return self.preset is None and self.weights is None


def default_scale(registry: Registry, name: str) -> int | None:
    """The scale ``--model name`` gets without ``--scale``: 4 when the alias has a x4 checkpoint
    among several (``hat``, ``hat-s``...), else None (one checkpoint, or a full name: its own)."""
    scales = registry.aliases.get(name.lower())
    if name.lower() in {n.lower() for n in registry.presets} or not scales or len(scales) == 1:
        return None
    return DEFAULT_SCALE if DEFAULT_SCALE in scales else None


def check_model_name(registry: Registry, name: str) -> None:
    """A :class:`ConfigError` listing every valid ``--model`` (``bicubic`` included) for an unknown name."""
    known = {n.lower() for n in registry.presets} | set(registry.aliases)
    if name.lower() not in known:
        choices = ", ".join([BICUBIC, *sorted(registry.aliases), *registry.names()])
        raise ConfigError(f"unknown model {name!r}; choose one of: {choices}")


def _check_overrides(conv_scale: float | None, img_range: float | None) -> None:
    if conv_scale is not None and not math.isfinite(conv_scale):
        raise ConfigError(f"--conv-scale {conv_scale}: must be a finite number (official models: 0.01)")
    if img_range is not None and not (math.isfinite(img_range) and img_range > 0):
        raise ConfigError(f"--img-range {img_range}: must be a finite number > 0 (official models: 1.0)")


def _file_choice(
    weights: str | os.PathLike[str], scale: int | None, conv_scale: float | None, img_range: float | None
) -> ModelChoice:
    from .checkpoint import identify, read_checkpoint  # torch: a file's scale is in its tensors

    _check_overrides(conv_scale, img_range)
    state, meta = read_checkpoint(weights)
    family, config = identify(state, meta, weights, conv_scale=conv_scale, img_range=img_range)
    if scale is not None and scale != config.scale:
        raise ConfigError(
            f"{weights} is a x{config.scale} model but --scale {scale} was given "
            f"(valid: {config.scale}, or leave --scale out)"
        )
    hidden = {"conv_scale": conv_scale, "img_range": img_range}
    loaded = (state, family, config)
    return ModelChoice(Path(weights).name, config.scale, weights=Path(weights), hidden=hidden, loaded=loaded)


def choose_model(
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    scale: int | None = None,
    registry: str | os.PathLike[str] | Registry | None = None,
    conv_scale: float | None = None,
    img_range: float | None = None,
) -> ModelChoice:
    """``--weights FILE`` or ``--model NAME`` (default ``$HAT_MODEL``, else the ImageNet-pretrained
    ``hat`` family) at ``--scale`` (default 4 where the model has x4); ``bicubic`` is the MATLAB
    baseline (x4 unless ``scale``). Every mistake is one :class:`ConfigError`."""
    if weights is not None:
        if model is not None:
            raise ConfigError("give either --model or --weights, not both")
        return _file_choice(weights, scale, conv_scale, img_range)
    if conv_scale is not None or img_range is not None:
        raise ConfigError("--conv-scale/--img-range apply to --weights files only")
    name = model or os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_FAMILY
    if name.lower() == BICUBIC:  # no weights: device/precision/tile do not apply
        from .baseline import check_scale

        check_scale(DEFAULT_SCALE if scale is None else scale)
        return ModelChoice(BICUBIC, DEFAULT_SCALE if scale is None else int(scale))
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    check_model_name(reg, name)
    preset = reg.resolve(name, default_scale(reg, name) if scale is None else scale)
    return ModelChoice(preset.name, preset.scale, preset=preset)


def with_offline_hint(exc: ModelNotAvailable | DownloadError) -> ModelNotAvailable | DownloadError:
    """The same error, suggesting the bundled model that needs no download."""
    error = type(exc)(f"{exc}; or use the bundled --model {OFFLINE_MODEL}, which needs no download")
    error.exit_code = exc.exit_code
    return error


def fetch_checkpoint(choice: ModelChoice, offline: bool = False, progress: Any = None) -> Path | None:
    """The local checkpoint of a preset choice (downloaded and verified first when missing unless
    offline); None for a file or ``bicubic``. Failures suggest the bundled ``hat-tiny``."""
    if choice.preset is None:
        return None
    from .store import ensure_checkpoint

    try:
        return ensure_checkpoint(choice.preset, offline=offline, progress=progress)
    except (ModelNotAvailable, DownloadError) as exc:
        if choice.preset.bundled:
            raise
        raise with_offline_hint(exc) from None


__all__ = [
    "DEFAULT_FAMILY",
    "DEFAULT_MODEL_ENV",
    "DEFAULT_SCALE",
    "OFFLINE_MODEL",
    "ModelChoice",
    "check_model_name",
    "choose_model",
    "default_scale",
    "fetch_checkpoint",
    "with_offline_hint",
]
