"""Cache maintenance: verify, import a file fetched by hand, remove."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from ..atomic import atomic_write, write_bytes
from ..errors import CheckpointError, ConfigError
from ..registry import Preset, Registry
from .hashing import sha256_file
from .lock import file_lock
from .paths import cache_stat, cached_path, expected_sha256, local_checkpoint, partial_path, pin_path, write_error

_CHUNK = 1 << 20


@dataclass(frozen=True)
class VerifyResult:
    name: str
    status: Literal["ok", "mismatch", "missing"]
    path: Path
    expected: str
    actual: str | None = None


def verify_checkpoint(preset: Preset) -> VerifyResult:
    """Re-hash the local file of a preset against the registry (or against the sha256 recorded
    when a file without a public checksum was imported)."""
    expected = expected_sha256(preset)
    path = local_checkpoint(preset)
    if path is None:
        where = preset.bundled_path if preset.bundled or expected is None else cached_path(preset)
        return VerifyResult(preset.name, "missing", where, expected or "")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    status = "ok" if actual == expected else "mismatch"
    return VerifyResult(preset.name, status, path, expected or "", actual)


def _copy_verified(source: Path, target: Path, sha256: str) -> None:
    """Copy ``source`` to ``target`` atomically, hashing the bytes as they are written: what lands
    in the cache is exactly what was hashed (a file changed meanwhile is refused)."""

    def copy(handle: BinaryIO) -> None:
        hasher = hashlib.sha256()
        try:
            with open(source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    handle.write(chunk)
                    hasher.update(chunk)
        except OSError as exc:
            if exc.filename is not None and Path(exc.filename) == source:
                raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}") from exc
            raise
        if hasher.hexdigest() != sha256:
            raise CheckpointError(f"{source} changed while it was imported: run the import again")

    atomic_write(target, copy, on_error=write_error)


def _sha256_of(source: Path) -> tuple[str, int]:
    try:
        return sha256_file(source), source.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _check_source(source: Path) -> None:
    """The file to import is a regular file. ``Path.is_file()`` would raise OSError for a name too
    long (ENAMETOOLONG) or a folder that may not be searched: one line naming the file instead."""
    try:
        info = source.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{source}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path (from Python; argv has none)
        raise CheckpointError(f"cannot read {source!r}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{source} is not a regular file: give the checkpoint file to import")


def _check_is(source: Path, preset: Preset) -> None:
    """A file for a preset without a public checksum must at least be that network at that scale."""
    from ..checkpoint import identify, read_checkpoint  # torch: only for these imports

    state, meta = read_checkpoint(source)
    family, config = identify(state, meta, source)
    if family.name != preset.arch or config.scale != preset.scale:
        raise CheckpointError(
            f"{source} is a x{config.scale} {family.title} checkpoint, not {preset.name} "
            f"(x{preset.scale} {preset.arch.upper()})"
        )


def _import_unpinned(source: Path, preset: Preset, digest: str) -> Path:
    """Copy a file for a preset without a public checksum, then record its sha256 (the pin): later
    loads and ``hat models verify`` check the file against it."""
    _check_is(source, preset)
    previous = local_checkpoint(preset)
    target = cached_path(preset, digest)
    _copy_verified(source, target, digest)
    try:
        write_bytes(pin_path(preset), (digest + "\n").encode("ascii"), on_error=write_error)
    except BaseException:
        if previous != target:  # a file without its recorded sha256 would never be found
            target.unlink(missing_ok=True)
        raise
    if previous is not None and previous != target:
        previous.unlink(missing_ok=True)
    return target


def import_checkpoint(
    source: str | os.PathLike[str],
    registry: Registry,
    name: str | None = None,
    scale: int | None = None,
) -> list[tuple[Preset, Path]]:
    """Copy a hand-downloaded file into the cache for the preset ``name`` (checked against its
    sha256), or for every preset whose sha256 matches when no name is given."""
    source = Path(source)
    _check_source(source)
    wanted = registry.resolve(name, scale) if name else None
    if wanted is not None and wanted.bundled:
        raise ConfigError(f"model {wanted.name} is bundled with hat-cli: nothing to import")
    digest, size = _sha256_of(source)
    if wanted is not None and wanted.sha256 is None:
        return [(wanted, _import_unpinned(source, wanted, digest))]
    if wanted is not None and digest != wanted.sha256:
        raise CheckpointError(
            f"{source} is not {wanted.name}: sha256 {digest} ({size} bytes), expected {wanted.sha256}"
        )
    matches = [wanted] if wanted is not None else [p for p in registry if p.sha256 == digest and not p.bundled]
    if not matches:
        raise CheckpointError(
            f"{source} (sha256 {digest}) matches no model in the registry: pass --name NAME, "
            f"or add it to a registry file (HAT_REGISTRY)"
        )
    placed: list[tuple[Preset, Path]] = []
    for preset in matches:  # no unpinned preset here: they have no sha256 to match
        target = cached_path(preset)
        if target not in {path for _, path in placed}:
            _copy_verified(source, target, digest)
        placed.append((preset, target))
    return placed


def remove_checkpoint(preset: Preset) -> list[Path]:
    """Delete a preset's cached file and any partial download (and the recorded sha256 of a file
    imported without a public checksum); returns what was removed."""
    if preset.bundled:
        raise ConfigError(f"model {preset.name} is bundled with hat-cli and cannot be removed")
    if expected_sha256(preset) is None:
        return []
    target = cached_path(preset)
    removed = []
    folder = cache_stat(target.parent)
    if folder is None or not stat.S_ISDIR(folder.st_mode):
        return removed
    # Under the lock, so a download in progress is not cut off mid-write.
    with file_lock(target.with_name(target.name + ".lock")):
        for path in (target, partial_path(preset), *([] if preset.sha256 else [pin_path(preset)])):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise write_error(exc, path) from exc
    return removed


def presets_by_name(registry: Registry, names: Iterable[str], scale: int | None = None) -> list[Preset]:
    """Resolve several names/aliases (errors before any work starts), keeping order, no repeats."""
    seen: dict[str, Preset] = {}
    for name in names:
        preset = registry.resolve(name, scale)
        seen.setdefault(preset.name, preset)
    return list(seen.values())
