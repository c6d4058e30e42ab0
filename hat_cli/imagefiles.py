"""Finding image files in folders, and reading one as 8-bit pixels: the one walker and the one
8-bit reader that batch, bench and train share.

A folder is walked in name order, depth first, iteratively (any depth, no recursion limit).
Hidden entries (``.name``: our own temporary files, ``.git``) are passed over, a folder reached
twice through symlinks is walked once, and files whose extension no installed decoder reads are
reported as not images.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ConfigError, InputImageError
from .imageio import DEFAULT_MAX_PIXELS, read_picture


@cache
def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (``.png``) of every format Pillow can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in image_extensions()


@dataclass
class FolderScan:
    """What a folder holds: image files (walk order), other files, folders not entered or unreadable."""

    images: list[Path] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (folder, reason)
    subfolders_skipped: int = 0  # subfolders not entered because the walk was not recursive


def resolved(path: Path) -> Path:
    """``path.resolve()``, or its absolute form where resolving fails (permissions, loops)."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def path_kind(path: Path) -> Literal["folder", "file", "missing"]:
    """What ``path`` names: a folder, a file (anything else that exists, a dangling symlink too) or
    nothing. A name the system refuses (too long, ...) raises its OSError, where ``Path.is_dir()``
    would raise it from some call sites and not others."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "file" if os.path.islink(path) else "missing"
    return "folder" if stat.S_ISDIR(mode) else "file"


def is_folder(path: Path) -> bool:
    """``path`` is a folder (False for anything the system refuses to look up)."""
    try:
        return path_kind(path) == "folder"
    except OSError:
        return False


FolderKey = tuple[int, int]  # (st_dev, st_ino): a folder, however it is reached


def folder_key(path: Path | os.DirEntry) -> FolderKey | None:
    """The identity of a folder (symlinks followed), or None when it cannot be stat'ed. One stat,
    where ``resolve()`` would lstat every component: a 1,100-level walk stays linear."""
    try:
        info = path.stat() if isinstance(path, os.DirEntry) else os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _entries(folder: Path, scan: FolderScan) -> Iterator[os.DirEntry]:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        scan.unreadable.append((folder, exc.strerror or str(exc)))
        return iter(())
    return (entry for entry in entries if not entry.name.startswith("."))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_folder(
    folder: Path,
    recursive: bool = False,
    pattern: str | None = None,
    exclude: Path | None = None,
    visited: set[FolderKey] | None = None,
) -> FolderScan:
    """Walk ``folder`` (and, if ``recursive``, its subfolders, except ``exclude``).

    ``pattern`` keeps files whose name or path relative to ``folder`` matches it (fnmatch).
    ``visited`` (:func:`folder_key` of folders) is shared between calls so no folder is walked twice.
    """
    scan = FolderScan()
    visited = set() if visited is None else visited
    excluded = folder_key(exclude) if exclude is not None else None
    stack = [_entries(folder, scan)]
    visited.add(folder_key(folder) or (-1, id(folder)))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        if _is_dir(entry):
            if not recursive:
                scan.subfolders_skipped += 1
            elif (key := folder_key(entry)) is None or (key not in visited and key != excluded):
                if key is not None:
                    visited.add(key)
                stack.append(_entries(path, scan))  # a folder that cannot be stat'ed is reported there
            continue
        if pattern and not (fnmatch(entry.name, pattern) or fnmatch(path.relative_to(folder).as_posix(), pattern)):
            continue
        (scan.images if is_image_name(path) else scan.not_images).append(path)
    return scan


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (walk order); :class:`ConfigError` if it is not a readable folder."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"not a folder: {path}")
    scan = scan_folder(path, recursive)
    if scan.unreadable:
        where, reason = scan.unreadable[0]
        raise ConfigError(f"{where}: cannot read folder ({reason})")
    return scan.images


def read_rgb8(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An 8-bit image as ``H x W x 3`` uint8 RGB, or ``H x W`` uint8 for grey (alpha dropped).

    Decoded like every input of ``hat upscale`` (:func:`hat_cli.imageio.read_picture`: EXIF
    orientation applied, the pixel limit enforced, CMYK to sRGB); 16-bit images are refused, as
    8-bit benchmarks and training data are what the scores mean.
    """
    picture = read_picture(Path(path), max_pixels)
    if picture.bits != 8:
        raise InputImageError(f"{path}: a 16-bit image ({picture.mode}): only 8-bit images are supported here")
    frame = picture.frames[0]
    colour = frame[..., :-1] if picture.has_alpha else frame
    return colour[..., 0] if picture.is_grey else np.ascontiguousarray(colour)


__all__ = [
    "FolderKey",
    "FolderScan",
    "folder_key",
    "image_extensions",
    "is_folder",
    "is_image_name",
    "list_images",
    "path_kind",
    "read_rgb8",
    "resolved",
    "scan_folder",
]
