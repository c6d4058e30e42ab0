"""Where checkpoints live: the user cache, and bundled files inside the package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ModelNotAvailable
from .registry import Preset

CACHE_ENV = "HAT_CACHE_DIR"


def cache_dir() -> Path:
    """``$HAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/hat``, else the platform's user cache folder."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "hat"
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "hat"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "hat" / "Cache"
    return home / ".cache" / "hat"


def cached_path(preset: Preset) -> Path:
    """Cache location of a preset's file. The sha256 is part of the name, so a registry that
    changes a file's hash never gets the old file served."""
    path = Path(preset.file)
    return cache_dir() / "checkpoints" / f"{path.stem}.{preset.sha256[:12]}{path.suffix}"


def local_checkpoint(preset: Preset) -> Path | None:
    """The checkpoint's path if it is bundled or already cached, else None."""
    if preset.bundled:
        return preset.bundled_path if preset.bundled_path.is_file() else None
    path = cached_path(preset)
    return path if path.is_file() else None


def require_checkpoint(preset: Preset) -> Path:
    """The local checkpoint, or a :class:`ModelNotAvailable` saying where to put it."""
    if (path := local_checkpoint(preset)) is not None:
        return path
    if preset.bundled:
        raise ModelNotAvailable(f"bundled model file {preset.bundled_path} is missing: reinstall hat-cli")
    raise ModelNotAvailable(
        f"model {preset.name} is not cached: expected {cached_path(preset)} "
        f"(file {preset.file}, sha256 {preset.sha256}); get it from {', '.join(preset.urls[:1]) or 'its source'} "
        f"and run 'hat models import FILE --name {preset.name}'"
    )
