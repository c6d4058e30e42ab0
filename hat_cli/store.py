"""Where checkpoints live (the user cache, bundled files) and how they get there.

Downloads follow torch.hub/pooch practice: stream into ``<final>.part`` in the cache folder while
hashing, accept only a matching size and sha256, then ``os.replace`` into place, so a file under
its final name is always complete and verified. One lock file per checkpoint serialises
concurrent ``hat`` processes.

What stays on disk after a failure:

* dropped connection, timeout, Ctrl-C, crash: ``<final>.part`` is kept and the next download
  resumes it with an HTTP ``Range`` request (its bytes are re-hashed first);
* wrong bytes (sha256/size mismatch), disk full, write errors: the partial is deleted.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import random
import shutil
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlparse

from .errors import CheckpointError, ConfigError, DownloadError, HatError, ModelNotAvailable
from .registry import Preset, Registry, is_allowed_url

CACHE_ENV = "HAT_CACHE_DIR"
OFFLINE_ENV = "HAT_OFFLINE"
_CHUNK = 1 << 18
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_TRUE = {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------- locations
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


def checkpoints_dir() -> Path:
    return cache_dir() / "checkpoints"


def cached_path(preset: Preset) -> Path:
    """Cache location of a preset's file. The sha256 is part of the name, so a registry that
    changes a file's hash never gets the old file served."""
    folder = checkpoints_dir()
    path = Path(preset.file)
    name = f"{path.stem}.{preset.sha256[:12]}{path.suffix}"
    # The registry validates names, but a Preset built in code is not: never leave the cache folder.
    inside = os.path.dirname(os.path.normpath(folder / name)) == os.path.normpath(folder)
    if not inside or path.name != preset.file or "\\" in name or name.startswith("."):
        raise ConfigError(f"model {preset.name}: file {preset.file!r} would leave the cache folder {folder}")
    return folder / name


def partial_path(preset: Preset) -> Path:
    """Where an unfinished download is kept for resuming."""
    path = cached_path(preset)
    return path.with_name(path.name + ".part")


def local_checkpoint(preset: Preset) -> Path | None:
    """The checkpoint's path if it is bundled or already cached, else None."""
    if preset.bundled:
        return preset.bundled_path if preset.bundled_path.is_file() else None
    path = cached_path(preset)
    return path if path.is_file() else None


def _import_hint(preset: Preset) -> str:
    source = preset.urls[0] if preset.urls else "its source"
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
    raise ModelNotAvailable(
        f"model {preset.name} is not cached: expected {cached_path(preset)} ({_import_hint(preset)})"
    )


def is_offline(offline: bool = False) -> bool:
    """True when ``offline`` is set or ``$HAT_OFFLINE`` is 1/true/yes/on: never touch the network."""
    return offline or os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


# ---------------------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class DownloadProgress:
    """One progress report; ``done`` counts bytes on disk, a resumed partial included."""

    name: str
    url: str
    done: int
    total: int | None
    finished: bool = False  # last report for this file (success or failure)


ProgressCallback = Callable[[DownloadProgress], None]


class TqdmProgress:
    """A :data:`ProgressCallback` drawing one tqdm bar per file (bytes, speed, ETA)."""

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file
        self._bars: dict[str, object] = {}

    def __call__(self, event: DownloadProgress) -> None:
        from tqdm import tqdm

        bar = self._bars.get(event.name)
        if bar is None and event.finished:
            return  # every mirror failed before the first byte: no bar to close
        if bar is None:
            bar = self._bars[event.name] = tqdm(
                total=event.total,
                initial=event.done,
                desc=event.name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.file or sys.stderr,
                dynamic_ncols=True,
            )
        assert isinstance(bar, tqdm)
        if event.done < bar.n:  # restarted from zero (server ignored Range, or another mirror)
            bar.reset(total=event.total)
        bar.update(event.done - bar.n)
        if event.finished:
            bar.close()
            del self._bars[event.name]


# ---------------------------------------------------------------------------------------- errors
def _write_error(exc: OSError, path: Path) -> HatError:
    """One clear line for the file-system failures users can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DownloadError(f"disk full writing {path} ({reason}): free space or set {CACHE_ENV} to another disk")
    if isinstance(exc, PermissionError | NotADirectoryError | FileExistsError) or exc.errno == errno.EROFS:
        return ConfigError(f"cannot write {path} ({reason}): set {CACHE_ENV} to a writable folder")
    return DownloadError(f"cannot write {path}: {reason}")


class _Transient(Exception):
    """Worth retrying the same mirror after a pause (timeouts, 5xx, dropped connections)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # no TCP connection at all: likely a firewall, retry once only


class _Fallthrough(Exception):
    """This mirror will not work: go to the next one at once (4xx, wrong file, refused redirect)."""


class _Mismatch(_Fallthrough):
    """The bytes arrived but are not the registry's file."""


class _Restart(Exception):
    """The partial file cannot be resumed: it was deleted, start again from byte 0."""


# ---------------------------------------------------------------------------------------- locking
if os.name == "nt":  # pragma: no cover - exercised on Windows CI only
    import msvcrt

    def _lock_fd(fd: int) -> None:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                return
            except OSError:
                continue

else:
    import fcntl

    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if needed, removed on release).

    The file is deleted while still held, so after acquiring we check that the name still
    refers to the file we locked; if not, someone released and removed it: lock the new one.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_error(exc, path) from exc
        try:
            _lock_fd(fd)
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        if os.name != "nt":  # Windows cannot delete an open file; the empty lock file stays
            with suppress(OSError):
                os.unlink(path)
        os.close(fd)


# ---------------------------------------------------------------------------------------- HTTP
@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try each mirror. Delays are ``backoff * 2**n`` (capped, with jitter)."""

    retries: int = 3  # extra tries per mirror after a transient failure
    backoff: float = 1.0  # seconds before the first retry; 0 disables waiting (tests)
    max_delay: float = 30.0
    timeout: float = 30.0  # seconds of network silence before a try fails

    def delay(self, retry: int) -> float:
        return min(self.max_delay, self.backoff * 2**retry) * random.uniform(1.0, 1.25)


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs a registry could name (https, or http on loopback)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        if not is_allowed_url(newurl):
            raise _Fallthrough(f"redirect to {newurl} refused (only https is allowed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str) -> urllib.request.OpenerDirector:
    """http/https only (no file://, ftp://, data:); proxies from the environment, except for loopback."""
    loopback = (urlparse(url).hostname or "") in _LOOPBACK
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({} if loopback else None),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _SafeRedirect(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _is_transient(exc: BaseException) -> bool:
    """Timeouts, resets and truncated bodies may heal; DNS failures, refused connections and
    certificate errors will not within a backoff."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 425, 429)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return isinstance(reason, BaseException) and _is_transient(reason)
    if isinstance(exc, ssl.SSLCertVerificationError | ConnectionRefusedError):
        return False
    return isinstance(exc, TimeoutError | ConnectionError | http.client.HTTPException | ssl.SSLError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return _describe(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} bytes ({exc.expected} more expected)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _user_agent() -> str:
    from . import __version__  # imported late: the package imports this module while initialising

    return f"hat-cli/{__version__}"


def _hash_file(path: Path, hasher: hashlib._Hash | None = None) -> tuple[hashlib._Hash, int]:
    hasher = hasher or hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return hasher, size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    return _hash_file(Path(path))[0].hexdigest()


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


@dataclass
class _Attempt:
    """Download one mirror into ``part``, resuming what is there; returns on a verified file."""

    preset: Preset
    url: str
    part: Path
    policy: RetryPolicy
    progress: ProgressCallback | None

    def report(self, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(DownloadProgress(self.preset.name, self.url, done, total))

    def _resume_state(self) -> tuple[hashlib._Hash, int]:
        """Hash of the bytes already on disk; drops a partial that cannot belong to the file."""
        size = self.preset.size
        try:
            offset = self.part.stat().st_size
        except FileNotFoundError:
            return hashlib.sha256(), 0
        if offset == 0 or (size is not None and offset > size):
            self.part.unlink()
            return hashlib.sha256(), 0
        return _hash_file(self.part)

    def run(self) -> tuple[str, int]:
        """``(sha256, size)`` of the complete ``part`` file."""
        try:
            hasher, offset = self._resume_state()
        except OSError as exc:
            raise _write_error(exc, self.part) from exc
        if self.preset.size is not None and offset == self.preset.size:
            return hasher.hexdigest(), offset  # a previous run got every byte: no network needed
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = _opener(self.url).open(request, timeout=self.policy.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:  # the partial is not a prefix of this file
                self.part.unlink(missing_ok=True)
                raise _Restart from exc
            raise (_Transient if _is_transient(exc) else _Fallthrough)(_describe(exc)) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError):
                raise _Transient(f"no connection within {self.policy.timeout:g} s", unreachable=True) from exc
            raise (_Transient if _is_transient(exc) else _Fallthrough)(_describe(exc)) from exc
        with response:
            if response.status == 206 and offset:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    raise _Fallthrough(f"asked for bytes {offset}- but got Content-Range {start}")
            elif response.status == 200:
                if offset:  # the server ignores Range: start over
                    hasher, offset = hashlib.sha256(), 0
            else:
                raise _Fallthrough(f"unexpected HTTP {response.status}")
            if "text/html" in response.headers.get("Content-Type", ""):
                raise _Fallthrough("served a web page, not a checkpoint (a login or confirmation page?)")
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            if self.preset.size is not None and total is not None and total != self.preset.size:
                raise _Fallthrough(f"serves {total} bytes but the registry says {self.preset.size}")
            expected = self.preset.size or total
            return self._stream(response, hasher, offset, expected, total)

    def _stream(
        self,
        response: http.client.HTTPResponse,
        hasher: hashlib._Hash,
        offset: int,
        expected: int | None,
        total: int | None,
    ) -> tuple[str, int]:
        try:
            handle = open(self.part, "ab" if offset else "wb")  # noqa: SIM115  (closed by the with below)
        except OSError as exc:
            raise _write_error(exc, self.part) from exc
        done = offset
        with handle:
            self.report(done, expected)
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # what has arrived: a timeout loses nothing already received
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(_describe(exc)) from exc
                if not chunk:
                    break
                done += len(chunk)
                if expected is not None and done > expected:
                    raise _Mismatch(f"sent more than the expected {expected} bytes")
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise _write_error(exc, self.part) from exc
                hasher.update(chunk)
                self.report(done, expected)
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise _write_error(exc, self.part) from exc
        if total is not None and done < total:  # urllib returns b"" on a premature close
            raise _Transient(f"connection closed after {done} of {total} bytes")
        return hasher.hexdigest(), done


@dataclass(frozen=True)
class DownloadResult:
    """Where the checkpoint is, and the mirror it came from (None: it was already there)."""

    path: Path
    url: str | None = None


def _fetch_mirror(preset: Preset, url: str, target: Path, policy: RetryPolicy, progress) -> None:
    part = partial_path(preset)
    attempt = _Attempt(preset, url, part, policy, progress)
    retry = 0
    restarted = False
    while True:
        resumed = part.exists()
        try:
            digest, size = attempt.run()
        except _Transient as exc:
            # A host that never answers the connection would cost retries x timeout: one retry only.
            if retry >= (min(policy.retries, 1) if exc.unreachable else policy.retries):
                raise _Fallthrough(f"{exc} ({retry + 1} tries)") from exc
            time.sleep(policy.delay(retry))
            retry += 1
            continue
        except _Restart:
            if restarted:
                raise _Fallthrough("cannot resume the partial download") from None
            restarted = True
            continue
        except _Mismatch:
            part.unlink(missing_ok=True)
            raise
        except HatError:  # disk full, permission: a partial we cannot extend is junk
            part.unlink(missing_ok=True)
            raise
        if digest != preset.sha256 or (preset.size is not None and size != preset.size):
            part.unlink(missing_ok=True)
            if resumed and not restarted:  # the old partial may have been the bad part: once more from 0
                restarted = True
                continue
            raise _Mismatch(f"sha256 mismatch: expected {preset.sha256}, got {digest} ({size} bytes)")
        try:
            os.replace(part, target)
        except OSError as exc:
            raise _write_error(exc, target) from exc
        return


def download_checkpoint(
    preset: Preset,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
) -> DownloadResult:
    """Fetch a preset's checkpoint into the cache (mirrors in order), unless it is already there.

    Safe to call from several processes at once: one downloads, the others wait and reuse it.
    Raises :class:`DownloadError` listing every mirror's failure.
    """
    if (path := local_checkpoint(preset)) is not None:
        return DownloadResult(path)
    if preset.bundled:
        return DownloadResult(require_checkpoint(preset))
    if not preset.urls:
        raise ModelNotAvailable(f"model {preset.name} has no download URL ({_import_hint(preset)})")
    policy = policy or RetryPolicy()
    target = cached_path(preset)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, target.parent) from exc
    failures = []
    with file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():  # another process finished it while we waited
            return DownloadResult(target)
        try:
            for url in preset.urls:
                if not is_allowed_url(url):
                    failures.append(f"{url}: not https (refused)")
                    continue
                try:
                    _fetch_mirror(preset, url, target, policy, progress)
                    return DownloadResult(target, url)
                except _Fallthrough as exc:
                    failures.append(f"{url}: {exc}")
        finally:
            if progress is not None:
                done = target.stat().st_size if target.is_file() else 0
                progress(DownloadProgress(preset.name, "", done, preset.size, finished=True))
    part = partial_path(preset)
    kept = f" ({part.stat().st_size} bytes kept in {part}: run again to resume)" if part.is_file() else ""
    digest = "" if any(preset.sha256 in failure for failure in failures) else f" (sha256 {preset.sha256})"
    raise DownloadError(
        f"could not download {preset.name}: {'; '.join(failures)}{kept}. "
        f"Fetch it by hand and run 'hat models import FILE --name {preset.name}'{digest}"
    )


def ensure_checkpoint(
    preset: Preset,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
) -> Path:
    """The local checkpoint, downloaded first when missing unless offline (``offline`` or ``$HAT_OFFLINE``)."""
    if (path := local_checkpoint(preset)) is not None:
        return path
    if preset.bundled or is_offline(offline):
        try:
            return require_checkpoint(preset)
        except ModelNotAvailable as exc:
            if preset.bundled:
                raise
            raise ModelNotAvailable(f"offline ({OFFLINE_ENV}=1 or --offline): {exc}") from None
    return download_checkpoint(preset, progress=progress, policy=policy).path


# ---------------------------------------------------------------------------------------- cache tools
@dataclass(frozen=True)
class VerifyResult:
    name: str
    status: Literal["ok", "mismatch", "missing"]
    path: Path
    expected: str
    actual: str | None = None


def verify_checkpoint(preset: Preset) -> VerifyResult:
    """Re-hash the local file of a preset against the registry."""
    path = local_checkpoint(preset)
    if path is None:
        where = preset.bundled_path if preset.bundled else cached_path(preset)
        return VerifyResult(preset.name, "missing", where, preset.sha256)
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    status = "ok" if actual == preset.sha256 else "mismatch"
    return VerifyResult(preset.name, status, path, preset.sha256, actual)


STALE_IMPORT_AGE_S = 3600.0


def _sweep_stale_imports(folder: Path, max_age_s: float = STALE_IMPORT_AGE_S) -> None:
    """Delete ``.import-*.tmp`` files left by imports that were killed (SIGKILL, power loss).

    A live import writes its file continuously, so one untouched for an hour is an orphan."""
    cutoff = time.time() - max_age_s
    for leftover in folder.glob(".import-*.tmp"):
        with suppress(OSError):  # raced with another sweeper, or not ours to delete: harmless
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()


def _copy_hashing(source: Path, folder: Path) -> tuple[Path, str, int]:
    """Copy ``source`` to a temporary file in ``folder``, hashing the bytes as they are written
    (what is hashed is exactly what lands in the cache)."""
    try:
        src = open(source, "rb")  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}") from exc
    with src:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _sweep_stale_imports(folder)
            fd, name = tempfile.mkstemp(prefix=".import-", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise _write_error(exc, folder) from exc
        tmp = Path(name)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as dst:
                while True:
                    try:
                        chunk = src.read(1 << 20)
                    except OSError as exc:
                        raise CheckpointError(f"cannot read {source}: {exc.strerror or exc}") from exc
                    if not chunk:
                        break
                    dst.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _write_error(exc, tmp) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return tmp, hasher.hexdigest(), size


def import_checkpoint(
    source: str | os.PathLike[str],
    registry: Registry,
    name: str | None = None,
    scale: int | None = None,
) -> list[tuple[Preset, Path]]:
    """Copy a hand-downloaded file into the cache for the preset ``name`` (checked against its
    sha256), or for every preset whose sha256 matches when no name is given."""
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file")
    wanted = registry.resolve(name, scale) if name else None
    if wanted is not None and wanted.bundled:
        raise ConfigError(f"model {wanted.name} is bundled with hat-cli: nothing to import")
    tmp, digest, size = _copy_hashing(source, checkpoints_dir())
    try:
        if wanted is not None:
            if digest != wanted.sha256:
                raise CheckpointError(
                    f"{source} is not {wanted.name}: sha256 {digest} ({size} bytes), expected {wanted.sha256}"
                )
            matches = [wanted]
        else:
            matches = [p for p in registry if p.sha256 == digest and not p.bundled]
            if not matches:
                raise CheckpointError(
                    f"{source} (sha256 {digest}) matches no model in the registry: pass --name NAME, "
                    f"or add it to a registry file (HAT_REGISTRY)"
                )
        placed: list[tuple[Preset, Path]] = []
        for preset in matches:
            target = cached_path(preset)
            if placed and target in {p for _, p in placed}:
                placed.append((preset, target))
                continue
            if placed:  # another preset with the same bytes under another file name
                shutil.copyfile(placed[0][1], tmp)
            os.replace(tmp, target)
            placed.append((preset, target))
        return placed
    except OSError as exc:
        raise _write_error(exc, tmp) from exc
    finally:
        tmp.unlink(missing_ok=True)


def remove_checkpoint(preset: Preset) -> list[Path]:
    """Delete a preset's cached file and any partial download; returns what was removed."""
    if preset.bundled:
        raise ConfigError(f"model {preset.name} is bundled with hat-cli and cannot be removed")
    target = cached_path(preset)
    removed = []
    if not target.parent.is_dir():
        return removed
    # Under the lock, so a download in progress is not cut off mid-write.
    with file_lock(target.with_name(target.name + ".lock")):
        for path in (target, partial_path(preset)):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _write_error(exc, path) from exc
    return removed


def presets_by_name(registry: Registry, names: Iterable[str], scale: int | None = None) -> list[Preset]:
    """Resolve several names/aliases (errors before any work starts), keeping order, no repeats."""
    seen: dict[str, Preset] = {}
    for name in names:
        preset = registry.resolve(name, scale)
        seen.setdefault(preset.name, preset)
    return list(seen.values())
