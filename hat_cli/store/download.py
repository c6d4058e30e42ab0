"""Downloading a checkpoint into the cache: mirrors in order, retries, resume, verification.

Downloads follow torch.hub/pooch practice: stream into ``<final>.part`` in the cache folder while
hashing, accept only a matching size and sha256, then move it into place
(:func:`hat_cli.atomic.commit`), so a file under its final name is always complete and verified.
One lock file per checkpoint serialises concurrent ``hat`` processes.

What stays on disk after a failure:

* dropped connection, timeout, Ctrl-C, crash: ``<final>.part`` is kept and the next download
  resumes it with an HTTP ``Range`` request (its bytes are re-hashed first);
* wrong bytes (sha256/size mismatch), disk full, write errors: the partial is deleted.

No download grows without bound: a preset with a ``size`` accepts exactly that many bytes; one
without accepts at most :func:`download_cap` bytes (2.5 times its parameters' float32 size plus
64 MiB). A mirror that announces or sends more is refused and its partial deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..atomic import commit
from ..errors import DownloadError, HatError, ModelNotAvailable
from ..registry import Preset, url_problem
from ..version import __version__
from .hashing import hash_file
from .lock import file_lock
from .paths import (
    OFFLINE_ENV,
    cache_stat,
    cached_path,
    import_hint,
    is_cached_file,
    is_offline,
    local_checkpoint,
    partial_path,
    require_checkpoint,
    write_error,
)

_CHUNK = 1 << 18
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The ceiling for presets without a size: official files hold one or two float32 copies of the
# weights (params_ema, and params for HAT-S and Real-HAT-GAN: 2.05x) plus index buffers and a pickle.
CAP_PARAM_COPIES = 2.5
CAP_SLACK = 64 << 20


def download_cap(preset: Preset) -> int:
    """The most bytes a download of ``preset`` may bring: its registry ``size`` when known, else
    ``CAP_PARAM_COPIES`` x 4 bytes x its parameter count + ``CAP_SLACK``."""
    if preset.size is not None:
        return preset.size
    return int(CAP_PARAM_COPIES * 4 * preset.config.num_params) + CAP_SLACK


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report; ``done`` counts bytes on disk, a resumed partial included."""

    name: str
    url: str
    done: int
    total: int | None
    finished: bool = False  # last report for this file (success or failure)


ProgressCallback = Callable[[DownloadProgress], None]


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
        if problem := url_problem(newurl):
            raise _Fallthrough(f"redirect to {newurl} refused (the URL {problem})")
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
    return f"hat-cli/{__version__}"


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
        if offset == 0 or (size is not None and offset > size) or offset > download_cap(self.preset):
            self.part.unlink()
            return hashlib.sha256(), 0
        return hash_file(self.part)

    def run(self) -> tuple[str, int]:
        """``(sha256, size)`` of the complete ``part`` file."""
        try:
            hasher, offset = self._resume_state()
        except OSError as exc:
            raise write_error(exc, self.part) from exc
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
        except ValueError as exc:  # a URL no request can be made of (the registry refuses those: never retried)
            raise _Fallthrough(f"bad URL: {exc}") from exc
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
            cap = download_cap(self.preset)
            if total is not None and total > cap:
                raise _Fallthrough(f"serves {total:,} bytes, more than the {cap:,}-byte ceiling for this model")
            return self._stream(response, hasher, offset, self.preset.size or total, total, cap)

    def _stream(
        self,
        response: http.client.HTTPResponse,
        hasher: hashlib._Hash,
        offset: int,
        expected: int | None,
        total: int | None,
        cap: int,
    ) -> tuple[str, int]:
        try:
            handle = open(self.part, "ab" if offset else "wb")  # noqa: SIM115  (closed by the with below)
        except OSError as exc:
            raise write_error(exc, self.part) from exc
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
                    raise _Mismatch(f"sent more than the expected {expected:,} bytes")
                if done > cap:  # no size known and no Content-Length (chunked): stop at the ceiling
                    raise _Mismatch(f"sent more than {cap:,} bytes, the ceiling for a model without a registry size")
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise write_error(exc, self.part) from exc
                hasher.update(chunk)
                self.report(done, expected)
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise write_error(exc, self.part) from exc
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
        resumed = cache_stat(part) is not None
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
            commit(part, target)
        except OSError as exc:
            raise write_error(exc, target) from exc
        return


def _size_or_0(path: Path) -> int:
    """Size of a regular file, 0 when there is none or it cannot be told (for messages only: this
    never raises, so it cannot hide the error being reported)."""
    try:
        info = path.stat()
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def download_checkpoint(
    preset: Preset,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
    offline: bool = False,
) -> DownloadResult:
    """Fetch a preset's checkpoint into the cache (mirrors in order), unless it is already there.

    Safe to call from several processes at once: one downloads, the others wait and reuse it.
    Raises :class:`DownloadError` listing every mirror's failure; offline (``offline`` or
    ``$HAT_OFFLINE``), a missing file is a :class:`ModelNotAvailable` naming it and its sha256.
    """
    if (path := local_checkpoint(preset)) is not None:
        return DownloadResult(path)
    if preset.bundled:
        return DownloadResult(require_checkpoint(preset))
    if is_offline(offline):
        try:
            return DownloadResult(require_checkpoint(preset))
        except ModelNotAvailable as exc:
            raise ModelNotAvailable(f"offline ({OFFLINE_ENV}=1 or --offline): {exc}") from None
    if not preset.urls:
        raise ModelNotAvailable(f"model {preset.name} has no download URL ({import_hint(preset)})")
    policy = policy or RetryPolicy()
    target = cached_path(preset)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, target.parent) from exc
    failures = []
    with file_lock(target.with_name(target.name + ".lock")):
        if is_cached_file(target):  # another process finished it while we waited
            return DownloadResult(target)
        try:
            for url in preset.urls:
                if problem := url_problem(url):
                    failures.append(f"{url}: refused (the URL {problem})")
                    continue
                try:
                    _fetch_mirror(preset, url, target, policy, progress)
                    return DownloadResult(target, url)
                except _Fallthrough as exc:
                    failures.append(f"{url}: {exc}")
        finally:
            if progress is not None:
                done = _size_or_0(target)
                progress(DownloadProgress(preset.name, "", done, preset.size, finished=True))
    part = partial_path(preset)
    kept = f" ({_size_or_0(part)} bytes kept in {part}: run again to resume)" if _size_or_0(part) else ""
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
    return download_checkpoint(preset, progress=progress, policy=policy, offline=offline).path
