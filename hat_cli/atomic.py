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

import hashlib
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from .errors import HatError, OutputError, OutputExists

TEMP_SUFFIX = ".hat-part"
_NAME_MAX = 255  # bytes per file name on Linux, macOS and Windows file systems
_TOKEN_HEX = 8

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temporaries are then left for the user
    fcntl = None  # type: ignore[assignment]
    import msvcrt


def _hidden_name(target: Path, token: str) -> Path:
    """``.<name>.<token>.hat-part`` beside ``target``, shortened to fit 255 bytes (a shortened name
    keeps a hash of the whole one, so two long names never share it)."""
    room = _NAME_MAX - len(f"..{token}{TEMP_SUFFIX}")
    name = os.fsencode(target.name)
    if len(name) > room:
        digest = hashlib.sha256(name).hexdigest()[:_TOKEN_HEX]
        cut = room - _TOKEN_HEX - 1
        while cut > 0 and name[cut] & 0xC0 == 0x80:  # never split a UTF-8 character
            cut -= 1
        name = name[:cut] + b"~" + digest.encode()
    stem = os.fsdecode(name)
    return target.with_name(f".{stem}.{token}{TEMP_SUFFIX}")


def temp_name(target: Path) -> Path:
    """``.<name>.<random>.hat-part`` beside ``target``; long names are shortened to fit 255 bytes."""
    return _hidden_name(target, secrets.token_hex(_TOKEN_HEX // 2))


def claim_name(target: Path) -> Path:
    """``.<name>.claim.hat-part``: the one claim file of ``target`` (see :func:`try_claim`)."""
    return _hidden_name(target, "claim")


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


def temporaries(folder: Path) -> list[Path]:
    """Our temporary and claim files in ``folder`` (live or stale)."""
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return []


def sweep_stale(folder: Path) -> int:
    """Delete our temporaries in ``folder`` left by killed processes; returns how many went."""
    if fcntl is None:
        return 0
    return sum(_sweep_one(path) for path in temporaries(folder))


def sweep_folders(folders: Iterable[Path], wait_s: float = 0.0) -> int:
    """:func:`sweep_stale` in every folder; with ``wait_s``, keep trying while temporaries remain
    (processes being killed release their locks a moment later). Returns how many went."""
    folders = sorted({Path(folder) for folder in folders})
    deadline = time.monotonic() + wait_s
    removed = sum(sweep_stale(folder) for folder in folders)
    while wait_s and any(temporaries(folder) for folder in folders) and time.monotonic() < deadline:
        time.sleep(0.2)
        removed += sum(sweep_stale(folder) for folder in folders)
    return removed


def _sweep_one(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is None or not _lock(fd, wait=False) or not _same_file(fd, path):
            return False
        path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Claim:
    """A held claim on an output (see :func:`try_claim`); :meth:`release` removes it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd < 0:
            return
        with suppress(OSError):
            self.path.unlink()  # while still locked: nobody can take a claim that is going away
        os.close(self.fd)
        self.fd = -1


_CLAIM_TRIES = 4  # a sweeper holds a stale claim's lock for an instant: look again before giving up


def _lock(fd: int, wait: bool) -> bool:
    """Take ``fd``'s exclusive lock (waiting, or not); False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True
    while True:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not wait:
                return False


def open_locked(path: Path, wait: bool = True) -> int | None:
    """Open (creating, mode 0o666 less the umask) and exclusively lock ``path``: the descriptor, or
    None when ``wait`` is False and another process holds the lock. A holder deletes the file when
    it releases it, so the name is checked to still be the file locked (else a fresh one is taken).
    ``OSError`` (cannot create the file) propagates."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        try:
            if not _lock(fd, wait):
                os.close(fd)
                return None
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def try_claim(target: Path) -> Claim | None:
    """Claim the right to write ``target`` among cooperating processes, or None when another live
    process holds the claim (it is computing that output now).

    The claim is a locked ``.<name>.claim.hat-part`` file beside the target: a process that dies
    loses the lock, and :func:`sweep_stale` removes the file. Without ``flock`` (Windows) every
    claim succeeds.
    """
    path = claim_name(target)
    for attempt in range(_CLAIM_TRIES):  # a sweeper testing the lock holds it for an instant
        try:
            fd = open_locked(path, wait=False)
        except OSError:
            return Claim(-1, path)  # cannot even create it (read-only folder): the write will say why
        if fd is not None:
            return Claim(fd, path)
        time.sleep(0.02 * (attempt + 1))
    return None


class TempFiles:
    """Temporary files being written, so an abort can remove them all (a hard stop while another
    thread is mid-write leaves nothing behind); after :meth:`discard_all` no new one is created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._claims: dict[Path, Claim] = {}
        self._swept: set[Path] = set()
        self._closed = False

    def sweep_once(self, folder: Path) -> None:
        """Remove killed runs' temporaries from ``folder`` the first time this run writes there
        (not at every write: that would scan a large output folder once per file)."""
        with self._lock:
            if folder in self._swept:
                return
            self._swept.add(folder)
        sweep_stale(folder)

    def claim(self, target: Path) -> bool:
        """:func:`try_claim` ``target`` until :meth:`unclaim` (or :meth:`discard_all`); False when
        another process holds it."""
        with self._lock:
            if self._closed:
                return False
            held = try_claim(target)
            if held is None:
                return False
            self._claims[target] = held
            return True

    def unclaim(self, target: Path) -> None:
        with self._lock:
            held = self._claims.pop(target, None)
        if held is not None:
            held.release()

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
            for held in self._claims.values():
                held.release()
            self._claims.clear()


def make_folders(folder: Path) -> None:
    """``folder`` and its missing parents, one level at a time without recursion
    (``Path.mkdir(parents=True)`` recurses once per level: a 1,100-level tree overflows it)."""
    missing = []
    current = Path(folder)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for level in reversed(missing):
        try:
            level.mkdir()
        except FileExistsError:
            if not level.is_dir():
                raise


def _reason(exc: OSError) -> str:
    import errno

    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def _output_error(exc: OSError, path: Path) -> HatError:
    return OutputError(f"{path}: cannot write ({_reason(exc)})")


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], None],
    overwrite: bool = True,
    temps: TempFiles | None = None,
    on_error: Callable[[OSError, Path], HatError] = _output_error,
) -> Path:
    """Write through ``write(handle)`` to a temporary file beside ``path``, then rename it into place.

    ``overwrite=False`` refuses to replace a file that exists, even one that appeared meanwhile
    (:class:`OutputExists`; the final step is a hard link, which cannot replace). File-system
    failures become ``on_error(exc, path)`` (default: an :class:`OutputError` naming ``path``);
    errors raised by ``write`` propagate unchanged. Either way nothing is left behind.
    """
    path = Path(path)
    temps = temps or TempFiles()
    try:
        make_folders(path.parent)
    except OSError as exc:
        raise on_error(exc, path.parent) from exc
    temps.sweep_once(path.parent)
    try:
        fd, tmp = temps.create(path)
    except OSError as exc:
        raise on_error(exc, path) from exc
    try:
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes it visible
            if overwrite:
                commit(tmp, path)  # while still locked: a sweeper never sees it unlocked
            else:
                _commit_new(tmp, path)
    except OSError as exc:
        raise on_error(exc, path) from exc
    finally:
        temps.release(tmp)
    return path


def _commit_new(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there: a hard link fails on an existing name
    (no check-then-replace race); file systems without hard links get the check and a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(f"{path}: exists (pass --overwrite to replace it)") from None
    except OSError:
        if path.exists():
            raise OutputExists(f"{path}: exists (pass --overwrite to replace it)") from None
        commit(tmp, path)
        return
    _sync_folder(path.parent)


def commit(tmp: Path, path: Path) -> None:
    """Move a complete, fsync'ed file into place (atomically on POSIX and Windows), and make the
    rename itself durable. Also the last step of resumable downloads, whose ``.part`` file is the
    temporary."""
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """POSIX: make a new directory entry survive a crash too."""
    if hasattr(os, "O_DIRECTORY"):
        with suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends (main thread): a write that must not be cut in
    half - a training checkpoint - runs to its end, then the signal acts as it would have.

    Held at the Python level, not by masking: with other threads alive (OpenMP's, a progress
    display's) the kernel hands a process signal to a thread that does not mask it, and Python then
    runs the handler in the main thread anyway, in the middle of the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    held = [sig for sig, handler in previous.items() if handler is not None]  # None: set outside Python
    for sig in held:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
        for sig in dict.fromkeys(received):  # each once, in order: now handled as usual
            signal.raise_signal(sig)


def write_bytes(
    path: Path,
    data: bytes | bytearray | memoryview,
    overwrite: bool = True,
    on_error: Callable[[OSError, Path], HatError] = _output_error,
) -> Path:
    """:func:`atomic_write` of a byte string."""
    return atomic_write(path, lambda handle: handle.write(data), overwrite=overwrite, on_error=on_error)


__all__ = [
    "TEMP_SUFFIX",
    "Claim",
    "TempFiles",
    "atomic_write",
    "claim_name",
    "commit",
    "create_temp",
    "make_folders",
    "open_locked",
    "signals_deferred",
    "sweep_folders",
    "sweep_stale",
    "temp_name",
    "temporaries",
    "try_claim",
    "write_bytes",
]
