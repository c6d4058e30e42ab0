"""Progress displays (all on stderr): the counter bars of upscale/bench, tile progress, and the
byte bars of checkpoint downloads."""

from __future__ import annotations

import sys
import threading
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..store import DownloadProgress
from .console import err_console


def counter_bar(eta: bool = False, disable: bool = False, console: Console = err_console) -> Progress:
    """The transient ``description [bar] done/total elapsed [eta]`` bar every command uses (stderr)."""
    # markup=False: descriptions carry file and model names ("a[/].png" is a name, not markup).
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True, disable=disable)


class TileProgress:
    """A ``progress(done, total)`` callback for :class:`hat_cli.api.Upscaler` showing a tiles bar.

    Nothing is shown until an image has more than one tile. With ``bar`` (a rich Progress already
    on screen, such as a files bar) each image's tiles get a task there, removed when the image is
    done; otherwise a transient bar of its own starts on first use. Safe to call from a worker
    thread.
    """

    def __init__(self, label: str = "tiles", bar: Progress | None = None) -> None:
        self.label = label
        self._shared = bar is not None
        self._bar = bar
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        with self._lock:
            if self._bar is None:
                self._bar = counter_bar()
                self._bar.start()
            if self._task is None:
                self._task = self._bar.add_task(self.label, total=total)
            self._bar.update(self._task, completed=done, total=total)
            if done >= total:  # the next image counts on a fresh task
                self._bar.remove_task(self._task)
                self._task = None

    def close(self) -> None:
        with self._lock:
            if self._bar is not None and not self._shared:
                self._bar.stop()
                self._bar = None
            self._task = None


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


def download_progress(quiet: bool = False) -> TqdmProgress | None:
    """A tqdm bar (bytes, speed, ETA) on stderr for checkpoint downloads; None when quiet or when
    stderr is not a terminal (logs and pipes stay clean)."""
    if quiet or not sys.stderr.isatty():
        return None
    return TqdmProgress(sys.stderr)
