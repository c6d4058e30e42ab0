"""Where checkpoints live: the user cache folder, bundled files, offline mode."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from pathlib import Path

from ..errors import ConfigError, DownloadError, HatError, ModelNotAvailable
from ..registry import FileRefused, Preset, read_regular_file

CACHE_ENV = "HAT_CACHE_DIR"
OFFLINE_ENV = "HAT_OFFLINE"
_TRUE = {"1", "true", "yes", "on"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PIN_BYTES = 256  # a recorded sha256 is 65 bytes: a bigger file is not ours


def cache_dir() -> Path:
    """``$HAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/hat``, else the platform's user cache folder."""
    if explicit := os.environ.get(CACHE_ENV):
        return _expand(explicit, CACHE_ENV)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return _expand(xdg, "XDG_CACHE_HOME") / "hat"
    try:
        home = Path.home()
    except (RuntimeError, KeyError) as exc:  # no $HOME and no password entry for this user
        raise ConfigError(f"cannot find your home folder ({exc}): set {CACHE_ENV} to a cache folder") from None
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "hat"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "hat" / "Cache"
    return home / ".cache" / "hat"


def _expand(value: str, variable: str) -> Path:
    """``~``/``~user`` expanded, or one ConfigError naming the variable when it cannot be."""
    try:
        return Path(value).expanduser()
    except (RuntimeError, KeyError):  # ~nosuchuser, or ~ without $HOME
        raise ConfigError(f"{variable}={value!r}: cannot expand its ~: give an absolute folder") from None


def checkpoints_dir() -> Path:
    return cache_dir() / "checkpoints"


def pin_path(preset: Preset) -> Path:
    """Where the sha256 of a hand-imported file is recorded, for presets without a public checksum."""
    return checkpoints_dir() / f"{preset.name}.sha256"


def expected_sha256(preset: Preset) -> str | None:
    """The registry's sha256, else the one recorded when the file was imported by hand, else None."""
    if preset.sha256:
        return preset.sha256
    try:  # bounded: the cache folder is the user's, but a FIFO or /dev/zero there must not hang us
        recorded = read_regular_file(pin_path(preset), _PIN_BYTES).decode("ascii").strip()
    except (OSError, FileRefused, UnicodeDecodeError):
        return None
    return recorded if _SHA256.fullmatch(recorded) else None


def cached_path(preset: Preset, sha256: str | None = None) -> Path:
    """Cache location of a preset's file. The sha256 is part of the name, so a registry that
    changes a file's hash never gets the old file served. ``sha256`` names the file of a preset
    without a public checksum (see :func:`expected_sha256`)."""
    digest = sha256 or expected_sha256(preset)
    if digest is None:
        raise ModelNotAvailable(f"model {preset.name} is not cached ({import_hint(preset)})")
    folder = checkpoints_dir()
    path = Path(preset.file)
    name = f"{path.stem}.{digest[:12]}{path.suffix}"
    # The registry validates names, but a Preset built in code is not: never leave the cache folder.
    inside = os.path.dirname(os.path.normpath(folder / name)) == os.path.normpath(folder)
    if not inside or path.name != preset.file or "\\" in name or name.startswith("."):
        raise ConfigError(f"model {preset.name}: file {preset.file!r} would leave the cache folder {folder}")
    return folder / name


def partial_path(preset: Preset) -> Path:
    """Where an unfinished download is kept for resuming."""
    path = cached_path(preset)
    return path.with_name(path.name + ".part")


def cache_stat(path: Path) -> os.stat_result | None:
    """``path.stat()`` for a path in the cache, None when nothing is there. Any other failure (a
    name too long for the file system, a symlink loop, a folder that may not be searched), which
    ``Path.is_file()`` raises as OSError, is one ConfigError naming the path and the fix."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"cannot use {path} ({exc.strerror or exc}): set {CACHE_ENV} to a usable folder") from exc


def is_cached_file(path: Path) -> bool:
    """``path.is_file()``, its errors as in :func:`cache_stat`."""
    info = cache_stat(path)
    return info is not None and stat.S_ISREG(info.st_mode)


def local_checkpoint(preset: Preset) -> Path | None:
    """The checkpoint's path if it is bundled or already cached, else None."""
    if preset.bundled:
        return preset.bundled_path if preset.bundled_path.is_file() else None
    if expected_sha256(preset) is None:
        return None
    path = cached_path(preset)
    return path if is_cached_file(path) else None


def import_hint(preset: Preset) -> str:
    source = preset.urls[0] if preset.urls else preset.origin or "its source"
    if preset.sha256 is None:
        return (
            f"file {preset.file} has no public checksum: get it from {source} and run "
            f"'hat models import FILE --name {preset.name}' (its sha256 is then computed and recorded)"
        )
    return (
        f"file {preset.file}, sha256 {preset.sha256}: get it from {source} "
        f"and run 'hat models import FILE --name {preset.name}'"
    )


def require_checkpoint(preset: Preset) -> Path:
    """The local checkpoint, or a :class:`ModelNotAvailable` saying where to put it."""
    if (path := local_checkpoint(preset)) is not None:
        return path
    if preset.bundled:
        raise ModelNotAvailable(f"bundled model file {preset.bundled_path} is missing: reinstall hat-cli")
    if expected_sha256(preset) is None:
        raise ModelNotAvailable(f"model {preset.name} is not cached ({import_hint(preset)})")
    raise ModelNotAvailable(
        f"model {preset.name} is not cached: expected {cached_path(preset)} ({import_hint(preset)})"
    )


def is_offline(offline: bool = False) -> bool:
    """True when ``offline`` is set or ``$HAT_OFFLINE`` is 1/true/yes/on: never touch the network."""
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def write_error(exc: OSError, path: Path) -> HatError:
    """One clear line for the file-system failures users can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DownloadError(f"disk full writing {path} ({reason}): free space or set {CACHE_ENV} to another disk")
    if isinstance(exc, PermissionError | NotADirectoryError | FileExistsError) or exc.errno == errno.EROFS:
        return ConfigError(f"cannot write {path} ({reason}): set {CACHE_ENV} to a writable folder")
    if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):  # the folder's path, not the download, is at fault
        return ConfigError(f"cannot write {path} ({reason}): set {CACHE_ENV} to a usable folder")
    return DownloadError(f"cannot write {path}: {reason}")
