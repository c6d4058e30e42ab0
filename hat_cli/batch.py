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
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .atomic import TempFiles
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ConfigError,
    HatError,
    InputImageError,
    OutputExists,
    first_line,
)
from .imagefiles import FolderKey, path_kind, resolved, scan_folder
from .imageio import (
    DEFAULT_MAX_PIXELS,
    Picture,
    check_writable,
    counted_pixels,
    format_for_suffix,
    holds_picture,
    kept_suffix,
    read_picture,
    write_picture,
)
from .outscale import OutputSize, resize_array
from .pixels import grey_to_rgb, quantize_array, to_unit
from .upscaling import UpscalerBase

Status = Literal["done", "skipped", "failed", "ignored", "planned"]
AlphaMode = Literal["bicubic", "model"]
OutputFormat = Literal["keep", "png", "jpg", "webp", "tiff"]
DEFAULT_NAME = "{stem}_x{scale}.{ext}"
NAME_FIELDS = ("stem", "ext", "scale", "model")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights Pillow uses for RGB -> L


@dataclass
class FileResult:
    """The outcome for one input; ``to_json`` is the object ``--json`` prints."""

    input: Path | None
    output: Path | None
    status: Status
    seconds: float | None = None
    error: str | None = None
    size: tuple[int, int] | None = None  # output width, height
    input_size: tuple[int, int] | None = None  # input width, height (once it was read)

    def to_json(self) -> dict:
        return {
            "type": "file",
            "input": None if self.input is None else str(self.input),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "input_size": None if self.input_size is None else list(self.input_size),
            "output_size": None if self.size is None else list(self.size),
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
    outscale: float | None = None  # the final factor when it differs from the network's
    subfolders_skipped: int = 0  # folders not entered (no --recursive)
    error: str | None = None  # a configuration error that stopped the run before any file
    error_code: int | None = None  # ... and its exit code

    stopped_by: int | None = None  # exit code of the signal that stopped the run at once (130, 143)

    def add(self, result: FileResult) -> None:
        setattr(self, result.status, getattr(self, result.status) + 1)

    @property
    def interrupted(self) -> bool:
        return self.not_started > 0 or self.stopped_by is not None

    @property
    def nothing_found(self) -> bool:
        """No image among the inputs (only non-image files, or empty folders): nothing to do."""
        return not (self.done or self.skipped or self.failed or self.planned or self.interrupted)

    @property
    def exit_code(self) -> int:
        if self.error_code is not None:
            return self.error_code
        if self.interrupted:
            return self.stopped_by or EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed or self.nothing_found else EXIT_OK

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
            "outscale": self.outscale,
            "subfolders_skipped": self.subfolders_skipped,
            "error": self.error,
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


@dataclass
class FoundInputs:
    """What :func:`find_inputs` found: sources to upscale, results for what cannot be used, and
    how many subfolders a walk without ``recursive`` passed over, per folder argument."""

    sources: list[Source]
    results: list[FileResult]
    subfolders_skipped: dict[Path, int] = field(default_factory=dict)

    def __iter__(self):  # ``sources, results = find_inputs(...)``
        return iter((self.sources, self.results))


def find_inputs(
    paths: Sequence[Path],
    recursive: bool = False,
    pattern: str | None = None,
    exclude: Path | None = None,
) -> FoundInputs:
    """Expand file and folder arguments into sources, plus results for what cannot be used.

    Files named explicitly are always tried. Folders are walked by
    :func:`hat_cli.imagefiles.scan_folder` (hidden entries passed over, ``pattern`` on the name or
    the relative path, the output folder ``exclude`` never entered); their non-image files are
    ``ignored``; without ``recursive`` their subfolders are counted in ``subfolders_skipped``.
    """
    sources: list[Source] = []
    results: list[FileResult] = []
    skipped: dict[Path, int] = {}
    seen: set[Path] = set()
    visited: set[FolderKey] = set()  # folders already walked: symlinks may loop back to a parent

    def add(source: Source) -> None:
        key = resolved(source.path)
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for path in paths:
        try:
            kind = path_kind(path)
        except OSError as exc:  # a name too long for the file system: that input fails, the batch goes on
            results.append(FileResult(path, None, "failed", error=f"{path}: cannot read ({exc.strerror or exc})"))
            continue
        if kind == "folder":
            scan = scan_folder(path, recursive, pattern, exclude, visited)
            for image in scan.images:
                add(Source(image, path))
            results += [FileResult(p, None, "ignored", error="not an image file") for p in scan.not_images]
            results += [
                FileResult(f, None, "failed", error=f"{f}: cannot read folder ({why})") for f, why in scan.unreadable
            ]
            if scan.subfolders_skipped:
                skipped[path] = scan.subfolders_skipped
        elif kind == "file":
            add(Source(path))
        else:
            results.append(FileResult(path, None, "failed", error=f"{path}: no such file or folder"))
    return FoundInputs(sources, results, skipped)


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
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as exc:
        raise ConfigError(f"--name {template!r}: {exc}") from exc
    fields = [name for name, _, _ in parsed if name is not None]
    # Plain fields only: a format spec fails on strings ({stem:d}) or pads names to any width ({stem:>99999999}).
    if any(spec or conversion for name, spec, conversion in parsed if name is not None):
        raise ConfigError(
            f"--name {template!r}: fields take no format spec or conversion (write {{stem}}, not {{stem:...}})"
        )
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
    return kept_suffix(source.suffix)[1:]


def _target(source: Source, scale: int | str, plan: OutputPlan) -> Path:
    """Where one source's output goes: -o FILE, -o FOLDER (tree mirrored), or beside the input."""
    if plan.output_is_file and plan.output is not None:
        return plan.output
    name = plan.name.format(
        stem=source.path.stem, ext=_extension(source.path, plan.format), scale=scale, model=plan.model
    )
    if plan.output is None:
        folder = source.path.parent
    elif source.root is None:
        folder = plan.output
    else:
        folder = plan.output / source.path.parent.relative_to(source.root)
    return folder / name


def _refusal(source: Source, target: Path, plan: OutputPlan, claimed: dict[Path, Path]) -> FileResult | None:
    """Why ``target`` cannot be written for ``source`` (as a result), or None when it can."""
    key = resolved(target)
    if key == resolved(source.path):
        return FileResult(source.path, target, "failed", error=f"{target}: output would replace the input")
    if key in claimed:
        error = f"{target}: same output as {claimed[key]} (use --name or --format to tell them apart)"
        return FileResult(source.path, target, "failed", error=error)
    claimed[key] = source.path
    try:
        exists = target.exists()
    except OSError as exc:  # e.g. a name over 255 bytes: ENAMETOOLONG is not "does not exist"
        return FileResult(source.path, target, "failed", error=f"{target}: cannot write ({exc.strerror or exc})")
    if exists and not plan.overwrite:
        if plan.skip_existing:
            return FileResult(source.path, target, "skipped", error="output exists")
        error = f"{target}: exists (pass --overwrite to replace it or --skip-existing to keep it)"
        return FileResult(source.path, target, "failed", error=error)
    return None


def plan_jobs(sources: Sequence[Source], scale: int | str, plan: OutputPlan) -> tuple[list[Job], list[FileResult]]:
    """Output path for each source; results for the ones that are skipped or cannot be written.

    ``scale`` is what ``{scale}`` in names stands for (the network's factor, or an ``--outscale``).
    """
    if plan.output_is_file and len(sources) > 1:
        raise ConfigError(f"-o {plan.output}: with several inputs, -o must be a folder")
    targets = [(source, _target(source, scale, plan)) for source in sources]
    # Sources that are another source's output (a previous run wrote them beside their inputs)
    # are results, not new work: without this a rerun would upscale its own outputs.
    outputs = {resolved(target): source for source, target in targets}
    jobs: list[Job] = []
    results: list[FileResult] = []
    claimed: dict[Path, Path] = {}
    for source, target in targets:
        origin = outputs.get(resolved(source.path))
        if origin is not None and origin is not source:
            results.append(FileResult(source.path, None, "skipped", error=f"is the output of {origin.path}"))
        elif (refused := _refusal(source, target, plan, claimed)) is not None:
            results.append(refused)
        else:
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


def _upscale_floats(upscaler: UpscalerBase, values: np.ndarray) -> np.ndarray:
    """H x W x C float32 in 0..1 -> (sH) x (sW) x C float32 through the upscaler's tensor path."""
    import torch  # loaded by the model already; not at import time, to keep the CLI start fast

    tensor = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1)[None]
    return upscaler.upscale_tensor(tensor)[0].float().permute(1, 2, 0).cpu().numpy()


def _resize_bicubic(plane: np.ndarray, scale: int) -> np.ndarray:
    image = Image.fromarray(plane.astype(np.float32), "F")
    return np.asarray(image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC))


def _upscale_frame(upscaler: UpscalerBase, frame: np.ndarray, picture: Picture, alpha: AlphaMode) -> np.ndarray:
    """One frame in the picture's layout. Plain RGB takes :meth:`UpscalerBase.upscale_array` (a
    network's tiled path quantises rows into the 8/16-bit output as they finish: bounded memory);
    grey runs as equal R, G, B and returns as luminance; alpha is upscaled apart, after the colour
    under transparent pixels is filled in."""
    if not picture.has_alpha and not picture.is_grey:
        return upscaler.upscale_array(frame)
    values = to_unit(frame)
    colour = values[..., :-1] if picture.has_alpha else values
    if picture.has_alpha:
        colour = fill_transparent(colour, values[..., -1])
    if picture.is_grey:
        colour = grey_to_rgb(colour)
    out = _upscale_floats(upscaler, colour)
    if picture.is_grey:
        out = (out * np.asarray(_LUMA, np.float32)).sum(axis=2, keepdims=True)
    if picture.has_alpha:
        plane = values[..., -1]
        if alpha == "model":
            upscaled_alpha = _upscale_floats(upscaler, np.repeat(plane[..., None], 3, axis=2)).mean(axis=2)
        else:
            upscaled_alpha = _resize_bicubic(plane, upscaler.scale)
        out = np.concatenate([out, upscaled_alpha[..., None]], axis=2)
    return quantize_array(out, frame.dtype)


def upscale_picture(
    upscaler: UpscalerBase, picture: Picture, alpha: AlphaMode = "bicubic", size: OutputSize | None = None
) -> Picture:
    """Upscale every frame, keeping the picture's layout (grey stays grey, alpha stays) and bit depth.

    With ``size`` (``--outscale``/``--width``/``--height``) the network's output is then resized
    to the size asked for (:mod:`hat_cli.outscale`).
    """
    frames = [_upscale_frame(upscaler, frame, picture, alpha) for frame in picture.frames]
    if size is not None and size.active:
        target = size.plan(picture.height, picture.width, upscaler.scale)
        if target.resize:
            frames = [resize_array(frame, target.height, target.width) for frame in frames]
    return picture.scaled(frames)


# ---------------------------------------------------------------------------------------- running
class SkipReason(str):
    """Why a job was skipped rather than done (``--skip-existing`` and an output that appeared)."""


@dataclass
class RunOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: AlphaMode = "bicubic"
    quality: int | None = None
    overwrite: bool = False
    # Leave outputs that exist, or appear during the run, alone; outputs that another hat process
    # is computing right now (it holds their claim) are skipped too, so concurrent runs share work.
    skip_existing: bool = False
    size: OutputSize | None = None  # --outscale / --width / --height
    prefetch: int = 2  # decoded images waiting for the model (memory bound: a few images)
    # An existing output with exactly the bytes this job writes counts as done, not as a refusal to
    # overwrite: on Ray, a task retried after its worker died may find its first attempt's file.
    identical_is_done: bool = False
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


def run_options(plan: OutputPlan, **fields: Any) -> RunOptions:
    """The run's options, with ``overwrite``/``skip_existing`` taken from the output plan (one
    source for them: the plan decides which outputs are jobs, the run how they are written)."""
    return RunOptions(overwrite=plan.overwrite, skip_existing=plan.skip_existing, **fields)


# One file's three steps. The local pipeline runs them on three threads; a cluster worker runs
# :func:`process_job` (all three in turn). Each step turns every failure into a message naming
# the file: one bad file never stops a batch.


def read_job(job: Job, options: RunOptions) -> tuple[Picture | None, str | None]:
    """Decode the input and check the output format can hold it (before any upscaling)."""
    try:
        if options.skip_existing and job.output.exists():
            return None, SkipReason("output exists")
    except OSError:
        pass  # the write will say what is wrong with the name
    try:
        picture = read_picture(job.source, options.max_pixels)
        check_writable(picture, job.output)
        return picture, None
    except HatError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder bug must cost one file, not the batch
        return None, f"{job.source}: cannot read ({type(exc).__name__}: {exc})"


def upscale_job(
    upscaler: UpscalerBase, job: Job, picture: Picture, options: RunOptions
) -> tuple[Picture | None, str | None]:
    try:
        final = (options.size or OutputSize()).plan(picture.height, picture.width, upscaler.scale)
        _check_output_pixels(job, picture, final.height, final.width, options.max_pixels * upscaler.scale**2)
        check_writable(picture, job.output, (final.height, final.width))  # the output's size, before the work
    except HatError as exc:
        return None, str(exc)
    try:
        return upscale_picture(upscaler, picture, options.alpha, options.size), None
    except HatError as exc:
        return None, f"{job.source}: {exc}"
    except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of device memory
        reason = first_line(exc)
        return None, f"{job.source}: upscaling failed ({reason})"


def _check_output_pixels(job: Job, picture: Picture, height: int, width: int, limit: int) -> None:
    """--outscale/--width/--height may not ask for more than the network may make from the largest
    input (--max-pixels x scale^2): checked before the work, not when the memory runs out."""
    if counted_pixels(width, height, len(picture.frames)) > limit:
        raise InputImageError(
            f"{job.source}: the output would be {width}x{height}, over the {limit:,}-pixel output limit "
            "(--max-pixels x scale^2): lower --outscale/--width/--height or raise --max-pixels"
        )


def write_job(job: Job, picture: Picture, options: RunOptions, temps: TempFiles | None = None) -> str | None:
    """Encode atomically; the error message, or None."""
    try:
        write_picture(picture, job.output, options.quality, options.overwrite, temps)
        return None
    except OutputExists as exc:
        if options.skip_existing:
            return SkipReason("output exists")
        if options.identical_is_done and holds_picture(job.output, picture, options.quality):
            return None  # written by an earlier attempt of this very job (a retried Ray task)
        return str(exc)
    except HatError as exc:
        return str(exc)
    except Exception as exc:
        return f"{job.output}: cannot write ({type(exc).__name__}: {exc})"


def _result(
    job: Job, picture: Picture | None, error: str | None, seconds: float, input_size: tuple[int, int] | None = None
) -> FileResult:
    if isinstance(error, SkipReason):
        return FileResult(job.source, job.output, "skipped", seconds, str(error), input_size=input_size)
    if error is not None:
        return FileResult(job.source, None, "failed", seconds, error, input_size=input_size)
    assert picture is not None
    return FileResult(job.source, job.output, "done", seconds, None, (picture.width, picture.height), input_size)


def _size(picture: Picture | None) -> tuple[int, int] | None:
    return None if picture is None else (picture.width, picture.height)


def process_job(
    upscaler: UpscalerBase, job: Job, options: RunOptions | None = None, temps: TempFiles | None = None
) -> FileResult:
    """Read, upscale and write one file; its result (failures included, never raised)."""
    options = options or RunOptions()
    temps = temps or TempFiles()
    started = time.perf_counter()
    picture, error = read_job(job, options)
    input_size = _size(picture)
    if picture is not None and (error := _claim(job, temps, options)) is not None:
        picture = None
    if picture is not None:
        picture, error = upscale_job(upscaler, job, picture, options)
    if picture is not None:
        error = write_job(job, picture, options, temps)
    temps.unclaim(job.output)
    return _result(job, picture, error, time.perf_counter() - started, input_size)


def _claim(job: Job, temps: TempFiles, options: RunOptions) -> SkipReason | None:
    """With ``skip_existing``, claim the output before computing it (None: go ahead)."""
    if not options.skip_existing:
        return None
    if not temps.claim(job.output):
        return SkipReason("being written by another hat run")
    if job.output.exists():  # finished by another run since it was read
        temps.unclaim(job.output)
        return SkipReason("output exists")
    return None


class _Pipeline:
    """Reader thread -> model (calling thread) -> writer thread, through bounded queues."""

    def __init__(
        self,
        upscaler: UpscalerBase,
        jobs: Sequence[Job],
        on_result: Callable[[FileResult], None],
        options: RunOptions,
        on_start: Callable[[Job], None] | None,
    ) -> None:
        self.upscaler, self.jobs, self.options = upscaler, jobs, options
        self.on_result, self.on_start = on_result, on_start
        self.temps = TempFiles()
        self.closing = threading.Event()  # threads must wind down (end of run or abort)
        self.aborted = threading.Event()  # results after this point are not reported
        self.crashed: list[BaseException] = []  # what killed a worker thread, re-raised on the caller's
        self.decoded: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
        self.encoded: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch))
        self.started_jobs = 0

    def read_all(self) -> None:
        for job in self.jobs:
            if self.options.stop.is_set() or self.closing.is_set():
                break
            started = time.perf_counter()
            picture, error = read_job(job, self.options)
            if not _put(self.decoded, (job, picture, error, time.perf_counter() - started), self.closing):
                return
        _put(self.decoded, _DONE, self.closing)

    def write_all(self) -> None:
        while (item := _get(self.encoded, self.closing)) is not _DONE:
            job, picture, error, seconds, input_size = item
            if error is None:
                started = time.perf_counter()
                error = write_job(job, picture, self.options, self.temps)
                seconds += time.perf_counter() - started
            self.temps.unclaim(job.output)
            if self.aborted.is_set():
                return
            self.on_result(_result(job, picture, error, seconds, input_size))

    def upscale_all(self) -> None:
        """The model's loop, on the calling thread (Ctrl-C arrives here)."""
        while not self.options.stop.is_set():
            item = _get(self.decoded, self.closing)
            if item is _DONE or self.options.stop.is_set():  # stopped while waiting: this one is not started
                break
            self.started_jobs += 1
            job, picture, error, seconds = item  # type: ignore[misc]
            input_size = _size(picture)
            if error is None and (error := _claim(job, self.temps, self.options)) is not None:
                picture = None
            if error is None:
                if self.on_start is not None:
                    self.on_start(job)
                started = time.perf_counter()
                picture, error = upscale_job(self.upscaler, job, picture, self.options)
                seconds += time.perf_counter() - started
            if not _put(self.encoded, (job, picture, error, seconds, input_size), self.closing):
                break
        _put(self.encoded, _DONE, self.closing)

    def _guarded(self, work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                self.crashed.append(exc)
                self.closing.set()

        return run

    def run(self) -> int:
        reader = threading.Thread(target=self._guarded(self.read_all), name="hat-reader", daemon=True)
        writer = threading.Thread(target=self._guarded(self.write_all), name="hat-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            self.upscale_all()
            writer.join()
            if self.crashed:
                raise self.crashed[0]
        except BaseException:
            self.aborted.set()
            self.closing.set()
            self.temps.discard_all()
            raise
        finally:
            self.closing.set()
        return len(self.jobs) - self.started_jobs


def run_batch(
    upscaler: UpscalerBase,
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
    return _Pipeline(upscaler, jobs, on_result, options or RunOptions(), on_start).run()
