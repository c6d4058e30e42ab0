"""One atomic write for every file hat creates (images, checkpoints, CSV, cache imports).

A file appears under its final name complete or not at all:

1. a temporary file ``.<name>.<random>.hat-part`` is created in the target's own folder (so the
   rename cannot cross file systems), with mode ``0o666`` filtered by the umask like any file the
   user creates (``mkstemp`` would make it 0600);
2. the data is written to that descriptor (never reopened by name), flushed and fsync'ed;
3. ``os.replace`` moves it into place; on any failure, interrupt included, the temporary is removed.

While it is written the temporary is locked (``flock``). A process killed outright (SIGKILL, power
loss) cannot remove it, so :func:`sweep_stale` - called before writing into a folder - deletes our
temporaries whose lock nobody holds any more; a live writer keeps its lock, so its file is never
touched.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

TEMP_SUFFIX = ".hat-part"
_NAME_MAX = 255  # bytes per file name on Linux, macOS and Windows file systems
_TOKEN_HEX = 8

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporaries are then left for the user
    fcntl = None  # type: ignore[assignment]


def temp_name(target: Path) -> Path:
    """``.<name>.<random>.hat-part`` beside ``target``; long names are shortened to fit 255 bytes."""
    room = _NAME_MAX - len(f"..{'0' * _TOKEN_HEX}{TEMP_SUFFIX}")
    stem = os.fsencode(target.name)[:room].decode(errors="ignore")
    return target.with_name(f".{stem}.{secrets.token_hex(_TOKEN_HEX // 2)}{TEMP_SUFFIX}")


def _lock_held_elsewhere(fd: int) -> bool:
    """True when another open file description holds the lock of ``fd``'s file."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def create_temp(target: Path) -> tuple[int, Path]:
    """A new, locked temporary file for ``target``: ``(descriptor, path)``."""
    while True:
        tmp = temp_name(target)
        try:  # O_EXCL: never reuse a name; mode 0o666 so the umask applies as for any new file
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, tmp):  # a sweeper took it between creation and lock: start over
                os.close(fd)
                continue
        return fd, tmp


def sweep_stale(folder: Path) -> int:
    """Delete our temporaries in ``folder`` left by killed processes; returns how many went."""
    if fcntl is None:
        return 0
    removed = 0
    with suppress(OSError):
        entries = list(os.scandir(folder))
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and _sweep_one(Path(entry.path)):
                removed += 1
    return removed


def _sweep_one(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if _lock_held_elsewhere(fd) or not _same_file(fd, path):
            return False
        path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class TempFiles:
    """Temporary files being written, so an abort can remove them all (a hard stop while another
    thread is mid-write leaves nothing behind); after :meth:`discard_all` no new one is created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._closed = False

    def create(self, target: Path) -> tuple[int, Path]:
        with self._lock:
            if self._closed:
                raise OutputError(f"{target}: not written (stopped)")
            fd, tmp = create_temp(target)
            self._paths.add(tmp)
            return fd, tmp

    def release(self, tmp: Path) -> None:
        with self._lock:
            self._paths.discard(tmp)
        tmp.unlink(missing_ok=True)

    def discard_all(self) -> None:
        with self._lock:
            self._closed = True
            for tmp in self._paths:
                tmp.unlink(missing_ok=True)
            self._paths.clear()


def _reason(exc: OSError) -> str:
    import errno

    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], None],
    overwrite: bool = True,
    temps: TempFiles | None = None,
) -> Path:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then rename it into place.

    ``overwrite=False`` refuses to replace a file that appeared meanwhile (:class:`OutputError`).
    File-system failures are :class:`OutputError` naming ``path``; errors raised by ``write``
    propagate unchanged. Either way nothing is left behind.
    """
    path = Path(path)
    temps = temps or TempFiles()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create its folder ({exc.strerror or exc})") from exc
    sweep_stale(path.parent)
    try:
        fd, tmp = temps.create(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from exc
    try:
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes it visible
            if not overwrite and path.exists():
                raise OutputError(f"{path}: exists (pass --overwrite to replace it)")
            commit(tmp, path)  # while still locked: a sweeper never sees it unlocked
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from exc
    finally:
        temps.release(tmp)
    return path


def commit(tmp: Path, path: Path) -> None:
    """Move a complete, fsync'ed file into place (atomically on POSIX and Windows), and make the
    rename itself durable. Also the last step of resumable downloads, whose ``.part`` file is the
    temporary."""
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: the directory entry survives a crash too
        with suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_bytes(path: Path, data: bytes | bytearray | memoryview, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of a byte string."""
    return atomic_write(path, lambda handle: handle.write(data), overwrite=overwrite)


__all__ = [
    "TEMP_SUFFIX",
    "TempFiles",
    "atomic_write",
    "commit",
    "create_temp",
    "sweep_stale",
    "temp_name",
    "write_bytes",
]
