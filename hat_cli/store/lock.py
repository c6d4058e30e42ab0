"""An exclusive lock file per checkpoint, so concurrent hat processes share one download."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..atomic import open_locked
from .paths import write_error


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if needed, removed on release; see
    :func:`hat_cli.atomic.open_locked`)."""
    try:
        fd = open_locked(path, wait=True)
    except OSError as exc:
        raise write_error(exc, path) from exc
    assert fd is not None
    try:
        yield
    finally:
        if os.name != "nt":  # Windows cannot delete an open file; the empty lock file stays
            with suppress(OSError):
                os.unlink(path)
        os.close(fd)
