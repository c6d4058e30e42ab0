"""Tile progress bar for ``hat upscale`` (stderr, shown only for images with more than one tile)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .console import err_console


@contextmanager
def tile_progress(label: str, enabled: bool = True) -> Iterator[TileProgress | None]:
    """A ``progress(done, total)`` callback for :meth:`hat_cli.api.Upscaler.upscale`, or None when disabled."""
    if not enabled:
        yield None
        return
    callback = TileProgress(label)
    try:
        yield callback
    finally:
        callback.close()


class TileProgress:
    """Starts a transient bar on the first call whose total exceeds one tile."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Progress | None = None
        self._task = None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("tiles"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
