"""Batch upscaling: find inputs, plan outputs, and run a read -> upscale -> write pipeline.

The model runs on the calling thread. A reader thread decodes ahead of it and a writer thread
encodes behind it, through bounded queues, so the device does not wait for disk or codecs and
memory stays bounded. Nothing here prints: results go to a callback that the CLI turns into lines,
JSON and a progress bar.
"""

from __future__ import annotations

import os
import queue
import string
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, ConfigError, HatError
from .imageio import (
    DEFAULT_MAX_PIXELS,
    Picture,
    TempFiles,
    check_writable,
    format_for_suffix,
    read_picture,
    readable_extensions,
    write_picture,
)

Status = Literal["done", "skipped", "failed", "ignored", "planned"]
AlphaMode = Literal["bicubic", "model"]
OutputFormat = Literal["keep", "png", "jpg", "webp", "tiff"]
DEFAULT_NAME = "{stem}_x{scale}.{ext}"
NAME_FIELDS = ("stem", "ext", "scale", "model")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights Pillow uses for RGB -> L


class SupportsUpscale(Protocol):
    """What the batch needs from :class:`hat_cli.api.Upscaler`."""

    @property
    def scale(self) -> int: ...

    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class FileResult:
    """The outcome for one input; ``to_json`` is the object ``--json`` prints."""

    input: Path | None
    output: Path | None
    status: Status
    seconds: float | None = None
    error: str | None = None
    size: tuple[int, int] | None = None  # output width, height

    def to_json(self) -> dict:
        return {
            "type": "file",
            "input": None if self.input is None else str(self.input),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
        }


@dataclass
class Summary:
    """Counts for the closing line and the final JSON object."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    planned: int = 0
    not_started: int = 0
    seconds: float = 0.0
    model: str | None = None  # the upscaler's name (None when nothing was loaded)
    scale: int | None = None

    def add(self, result: FileResult) -> None:
        setattr(self, result.status, getattr(self, result.status) + 1)

    @property
    def interrupted(self) -> bool:
        return self.not_started > 0

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def to_json(self) -> dict:
        return {
            "type": "summary",
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "ignored": self.ignored,
            "planned": self.planned,
            "not_started": self.not_started,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "model": self.model,
            "scale": self.scale,
            "exit_code": self.exit_code,
        }


# ---------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Source:
    """An input file and the folder argument it was found in (``None`` for a file argument)."""

    path: Path
    root: Path | None = None


def read_list(lines: Iterable[str]) -> list[Path]:
    """Paths from ``--from-list``: one a line, blank lines ignored, line endings stripped (not spaces)."""
    return [Path(line.rstrip("\r\n")) for line in lines if line.strip()]


def find_inputs(
    paths: Sequence[Path],
    recursive: bool = False,
    pattern: str | None = None,
    exclude: Path | None = None,
) -> tuple[list[Source], list[FileResult]]:
    """Expand file and folder arguments into sources, plus results for what cannot be used.

    Files named explicitly are always tried. In folders, hidden entries are passed over, files
    without an image extension are ``ignored``, ``pattern`` (on the name or the path relative to
    the folder) filters, and ``exclude`` (the output folder) is never descended into.
    """
    extensions = readable_extensions()
    excluded = _resolved(exclude) if exclude is not None else None
    sources: list[Source] = []
    results: list[FileResult] = []
    seen: set[Path] = set()

    def add(source: Source) -> None:
        key = _resolved(source.path)
        if key not in seen:
            seen.add(key)
            sources.append(source)

    visited: set[Path] = set()  # folders already walked: symlinks may loop back to a parent
    for path in paths:
        if path.is_dir():
            _walk(path, path, recursive, pattern, extensions, excluded, visited, add, results)
        elif path.exists() or path.is_symlink():
            add(Source(path))
        else:
            results.append(FileResult(path, None, "failed", error=f"{path}: no such file or folder"))
    return sources, results


def _walk(
    root: Path,
    folder: Path,
    recursive: bool,
    pattern: str | None,
    extensions: set[str],
    excluded: Path | None,
    visited: set[Path],
    add: Callable[[Source], None],
    results: list[FileResult],
) -> None:
    real = _resolved(folder)
    if real in visited:
        return
    visited.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        results.append(
            FileResult(folder, None, "failed", error=f"{folder}: cannot read folder ({exc.strerror or exc})")
        )
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden files, our own temporary files, .git and the like
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if recursive and (excluded is None or _resolved(path) != excluded):
                _walk(root, path, recursive, pattern, extensions, excluded, visited, add, results)
            continue
        if pattern and not (fnmatch(entry.name, pattern) or fnmatch(path.relative_to(root).as_posix(), pattern)):
            continue
        if path.suffix.lower() not in extensions:
            results.append(FileResult(path, None, "ignored", error="not an image file"))
            continue
        add(Source(path, root))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


# ---------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class OutputPlan:
    """Where outputs go: ``output`` is a folder (tree mirrored) or, for one input, a file."""

    output: Path | None = None
    name: str = DEFAULT_NAME
    format: OutputFormat = "keep"
    overwrite: bool = False
    skip_existing: bool = False
    output_is_file: bool = False
    model: str = "hat"

    def __post_init__(self) -> None:
        if self.overwrite and self.skip_existing:
            raise ConfigError("--overwrite and --skip-existing contradict each other: pick one")
        if self.format not in ("keep", "png", "jpg", "webp", "tiff"):
            raise ConfigError(f"--format {self.format!r}: use keep, png, jpg, webp or tiff")
        check_name_template(self.name)


def check_name_template(template: str) -> None:
    """Reject unknown fields, path separators and names without an image extension up front."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"--name {template!r}: {exc}") from exc
    unknown = [name for name in fields if name not in NAME_FIELDS]
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in NAME_FIELDS)
        raise ConfigError(f"--name {template!r}: unknown field {{{unknown[0]}}} (use {allowed})")
    sample = template.format(stem="photo", ext="png", scale=4, model="hat")
    if "/" in sample or os.sep in sample or sample in ("", ".", ".."):
        raise ConfigError(f"--name {template!r}: must be a file name, not a path (use -o for the folder)")
    if format_for_suffix(Path(sample).suffix) is None:
        raise ConfigError(f"--name {template!r}: must end in an image extension such as .{{ext}}")


def _extension(source: Path, fmt: OutputFormat) -> str:
    if fmt != "keep":
        return fmt
    suffix = source.suffix.lower()
    return suffix[1:] if suffix and format_for_suffix(suffix) else "png"


def plan_jobs(sources: Sequence[Source], scale: int, plan: OutputPlan) -> tuple[list[Job], list[FileResult]]:
    """Output path for each source; results for the ones that are skipped or cannot be written."""
    if plan.output_is_file and len(sources) > 1:
        raise ConfigError(f"-o {plan.output}: with several inputs, -o must be a folder")
    targets: list[tuple[Source, Path]] = []
    for source in sources:
        if plan.output_is_file and plan.output is not None:
            targets.append((source, plan.output))
            continue
        name = plan.name.format(
            stem=source.path.stem, ext=_extension(source.path, plan.format), scale=scale, model=plan.model
        )
        if plan.output is None:
            folder = source.path.parent
        elif source.root is None:
            folder = plan.output
        else:
            folder = plan.output / source.path.parent.relative_to(source.root)
        targets.append((source, folder / name))

    # Sources that are another source's output (a previous run wrote them beside their inputs)
    # are results, not new work: without this a rerun would upscale its own outputs.
    outputs = {_resolved(target): source for source, target in targets}
    jobs: list[Job] = []
    results: list[FileResult] = []
    claimed: dict[Path, Path] = {}
    for source, target in targets:
        key = _resolved(target)
        origin = outputs.get(_resolved(source.path))
        if origin is not None and origin is not source:
            results.append(FileResult(source.path, None, "skipped", error=f"is the output of {origin.path}"))
            continue
        if key == _resolved(source.path):
            results.append(FileResult(source.path, target, "failed", error=f"{target}: output would replace the input"))
            continue
        if key in claimed:
            error = f"{target}: same output as {claimed[key]} (use --name or --format to tell them apart)"
            results.append(FileResult(source.path, target, "failed", error=error))
            continue
        claimed[key] = source.path
        if target.exists() and not plan.overwrite:
            if plan.skip_existing:
                results.append(FileResult(source.path, target, "skipped", error="output exists"))
            else:
                error = f"{target}: exists (pass --overwrite to replace it or --skip-existing to keep it)"
                results.append(FileResult(source.path, target, "failed", error=error))
            continue
        jobs.append(Job(source.path, target))
    return jobs, results


# ---------------------------------------------------------------------------------------- pixels
def fill_transparent(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Replace the colour under fully transparent pixels by a smooth extension of the visible ones.

    Transparent pixels often hide arbitrary colour (black, or leftovers). A model sees all pixels,
    so that colour would bleed into visible edges; pull-push (average down a pyramid of visible
    pixels, then fill holes from the coarser level) extends the edge colours into the holes.
    ``colour`` is HxWxC float32, ``alpha`` HxW; returns a new array.
    """
    known = alpha > 0
    if known.all() or not known.any():
        return colour.copy()
    sums = [colour * known[..., None]]
    weights = [known.astype(np.float32)]
    while max(weights[-1].shape) > 1:
        sums.append(_pool2(sums[-1]))
        weights.append(_pool2(weights[-1]))
    filled = sums[-1] / np.maximum(weights[-1], 1e-12)[..., None]
    for level in range(len(sums) - 2, -1, -1):
        weight = weights[level]
        coarse = filled.repeat(2, axis=0).repeat(2, axis=1)[: weight.shape[0], : weight.shape[1]]
        mean = sums[level] / np.maximum(weight, 1e-12)[..., None]
        filled = np.where(weight[..., None] > 0, mean, coarse)
    return np.where(known[..., None], colour, filled).astype(np.float32)


def _pool2(array: np.ndarray) -> np.ndarray:
    """Sum over 2x2 blocks (zero-padded to even size)."""
    h, w = array.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (array.ndim - 2)
    array = np.pad(array, pad)
    return array[0::2, 0::2] + array[1::2, 0::2] + array[0::2, 1::2] + array[1::2, 1::2]


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWxC float32 -> (1, C, H, W)."""
    import torch  # loaded by the model already; not at import time, to keep the CLI start fast

    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)


def _from_tensor(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].float().permute(1, 2, 0).cpu().numpy()


def _resize_bicubic(plane: np.ndarray, scale: int) -> np.ndarray:
    image = Image.fromarray(plane.astype(np.float32), "F")
    return np.asarray(image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC))


def upscale_picture(upscaler: SupportsUpscale, picture: Picture, alpha: AlphaMode = "bicubic") -> Picture:
    """Upscale every frame, keeping the picture's layout (grey stays grey, alpha stays) and bit depth.

    Grey runs through the model as equal R, G, B and comes back as luminance; alpha is upscaled
    apart from the colour (bicubic or by the model), after transparent colour is filled in.
    """
    peak = 65535.0 if picture.bits == 16 else 255.0
    dtype = np.uint16 if picture.bits == 16 else np.uint8
    frames = []
    upscale_array = getattr(upscaler, "upscale_array", None)
    for frame in picture.frames:
        if upscale_array is not None and not picture.has_alpha and not picture.is_grey:
            # Plain RGB: the tiled engine quantises rows into the 8/16-bit output as they finish,
            # so peak memory stays the output plus one band of tiles (no full-size float buffers).
            frames.append(upscale_array(frame))
            continue
        values = frame.astype(np.float32) / peak
        colour = values[..., :-1] if picture.has_alpha else values
        if picture.has_alpha:
            colour = fill_transparent(colour, values[..., -1])
        if picture.is_grey:
            colour = np.repeat(colour, 3, axis=2)
        out = _from_tensor(upscaler.upscale_tensor(_to_tensor(colour)))
        if picture.is_grey:
            out = (out * np.asarray(_LUMA, np.float32)).sum(axis=2, keepdims=True)
        if picture.has_alpha:
            plane = values[..., -1]
            if alpha == "model":
                upscaled = _from_tensor(upscaler.upscale_tensor(_to_tensor(np.repeat(plane[..., None], 3, axis=2))))
                upscaled_alpha = upscaled.mean(axis=2)
            else:
                upscaled_alpha = _resize_bicubic(plane, upscaler.scale)
            out = np.concatenate([out, upscaled_alpha[..., None]], axis=2)
        frames.append(np.rint(np.clip(out, 0.0, 1.0) * peak).astype(dtype))
    return picture.scaled(frames, upscaler.scale)


# ---------------------------------------------------------------------------------------- running
@dataclass
class RunOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: AlphaMode = "bicubic"
    quality: int | None = None
    overwrite: bool = False
    prefetch: int = 2  # decoded images waiting for the model (memory bound: a few images)
    stop: threading.Event = field(default_factory=threading.Event)  # set: finish the current file, then stop


_DONE = object()


def _put(q: queue.Queue, item: object, closing: threading.Event) -> bool:
    """Blocking put that gives up when the run is closing (so no thread waits forever)."""
    while not closing.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, closing: threading.Event) -> object:
    """Blocking get that returns ``_DONE`` when the run is closing and nothing is left."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if closing.is_set():
                return _DONE


def run_batch(
    upscaler: SupportsUpscale,
    jobs: Sequence[Job],
    on_result: Callable[[FileResult], None],
    options: RunOptions | None = None,
    on_start: Callable[[Job], None] | None = None,
) -> int:
    """Upscale ``jobs`` in order; ``on_result`` gets one result per job (from the writer thread,
    in job order). Returns how many jobs were not started because ``options.stop`` was set.

    A ``KeyboardInterrupt`` (or any error) in the calling thread, or an error escaping a worker
    thread (``on_result`` failing, say), aborts at once: temporary files being written are removed,
    no result is reported after it, and the exception propagates to the caller.
    """
    options = options or RunOptions()
    temps = TempFiles()
    closing = threading.Event()  # threads must wind down (end of run or abort)
    aborted = threading.Event()  # results after this point are not reported
    crashed: list[BaseException] = []  # what killed a worker thread, re-raised on the caller's
    decoded: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
    encoded: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))

    def read() -> None:
        for job in jobs:
            if options.stop.is_set() or closing.is_set():
                break
            started = time.perf_counter()
            try:
                picture = read_picture(job.source, options.max_pixels)
                check_writable(picture, job.output)
                item = (job, picture, None)
            except HatError as exc:
                item = (job, None, str(exc))
            except Exception as exc:  # a decoder bug must cost one file, not the batch
                item = (job, None, f"{job.source}: cannot read ({type(exc).__name__}: {exc})")
            if not _put(decoded, (*item, time.perf_counter() - started), closing):
                return
        _put(decoded, _DONE, closing)

    def write() -> None:
        while (item := _get(encoded, closing)) is not _DONE:
            job, picture, error, seconds = item
            size = None
            if error is None:
                started = time.perf_counter()
                try:
                    write_picture(picture, job.output, options.quality, options.overwrite, temps)
                    size = (picture.width, picture.height)
                except HatError as exc:
                    error = str(exc)
                except Exception as exc:
                    error = f"{job.output}: cannot write ({type(exc).__name__}: {exc})"
                seconds += time.perf_counter() - started
            if aborted.is_set():
                return
            status: Status = "failed" if error else "done"
            on_result(FileResult(job.source, None if error else job.output, status, seconds, error, size))

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                crashed.append(exc)
                closing.set()

        return run

    reader = threading.Thread(target=guarded(read), name="hat-reader", daemon=True)
    writer = threading.Thread(target=guarded(write), name="hat-writer", daemon=True)
    reader.start()
    writer.start()
    started_jobs = 0
    try:
        while not options.stop.is_set():
            item = _get(decoded, closing)
            if item is _DONE or options.stop.is_set():  # stopped while waiting: this one is not started
                break
            started_jobs += 1
            job, picture, error, seconds = item  # type: ignore[misc]
            if error is None:
                if on_start is not None:
                    on_start(job)
                started = time.perf_counter()
                try:
                    picture = upscale_picture(upscaler, picture, options.alpha)
                except HatError as exc:
                    error = f"{job.source}: {exc}"
                except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of device memory
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    error = f"{job.source}: upscaling failed ({reason})"
                seconds += time.perf_counter() - started
            if not _put(encoded, (job, None if error else picture, error, seconds), closing):
                break
        _put(encoded, _DONE, closing)
        writer.join()
        if crashed:
            raise crashed[0]
    except BaseException:
        aborted.set()
        closing.set()
        temps.discard_all()
        raise
    finally:
        closing.set()
    return len(jobs) - started_jobs
