"""``hat upscale``: upscale image files and folders with a preset or any HAT checkpoint.

Built for scripts: one line per failure on stderr (the batch goes on), exit 0 when everything
succeeded, 1 when some inputs failed (or none was an image), 2 for usage errors, 130 when
interrupted, 143 on SIGTERM; ``--json`` prints one object per file and a summary on stdout. The
first Ctrl-C finishes the current file and stops; a second one, or SIGTERM, stops at once. Outputs
are written to a temporary name and renamed, so no partial image is ever left under an output name;
temporaries of killed runs are removed from the output folders by the next run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress

from ..batch import (
    DEFAULT_NAME,
    FileResult,
    Job,
    OutputPlan,
    RunOptions,
    Summary,
    find_inputs,
    plan_jobs,
    read_list,
    run_batch,
    sweep_folders,
)
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError, Terminated
from ..imageio import DEFAULT_MAX_PIXELS, format_for_suffix
from ..upscaling import UpscalerBase
from .cluster import CpusPerWorkerOpt, EngineOpt, GpusPerWorkerOpt, RayAddressOpt, WorkersOpt, cluster_engine
from .console import echo, err_console, print_error, print_line
from .options import (
    CompileOpt,
    ConvScaleOpt,
    DeviceOpt,
    ImgRangeOpt,
    JsonOpt,
    ModelOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    RegistryOpt,
    ScaleOpt,
    SelfEnsembleOpt,
    TileOpt,
    TileOverlapOpt,
    VerboseOpt,
    WeightsOpt,
    parse_tile,
)
from .progress import TileProgress, counter_bar, download_progress


class Reporter:
    """Turns results into lines, JSON and progress; called from the writer thread, hence the lock."""

    def __init__(self, as_json: bool, quiet: bool, progress: Progress | None) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.progress = progress
        self.task = progress.add_task("upscaling", total=0) if progress else None
        self.current: Path | None = None  # the file being upscaled (for --verbose lines)
        self.summary = Summary()
        self.reported = 0
        self._lock = threading.Lock()

    def __call__(self, result: FileResult) -> None:
        with self._lock:
            self.summary.add(result)
            self.reported += 1
            if self.as_json:
                echo(json.dumps(result.to_json()))
            if result.status == "failed":
                print_error(result.error or "")
            elif not (self.quiet or self.as_json):
                self._line(result)
            if self.progress is not None and self.task is not None and result.status in ("done", "failed"):
                self.progress.advance(self.task)

    def _line(self, result: FileResult) -> None:
        if result.status == "done":
            size = f"{result.size[0]}x{result.size[1]}, " if result.size else ""
            print_line(f"{result.input} -> {result.output} ({size}{result.seconds:.1f}s)", err=False)
        elif result.status == "planned":
            print_line(f"{result.input} -> {result.output}", err=False)
        elif result.status == "skipped":
            print_line(f"{result.input}: skipped ({result.error})", err=False)

    def starting(self, job: Job) -> None:
        self.current = job.source
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=job.source.name)

    def finish(self, dry_run: bool) -> None:
        """The closing summary on stderr (and as the last JSON object)."""
        summary = self.summary
        if self.as_json:
            echo(json.dumps(summary.to_json()))
        if summary.nothing_found:
            ignored = f" ({summary.ignored} non-image file{'s' if summary.ignored != 1 else ''} ignored)"
            print_error("no images found" + (ignored if summary.ignored else ""))
        single = summary.done + summary.skipped + summary.failed + summary.ignored <= 1
        if self.quiet or (single and not summary.interrupted and not dry_run):
            return  # one file: its own line already said everything
        parts = [f"would upscale {summary.planned}"] if dry_run else [f"done {summary.done}"]
        parts += [f"skipped {summary.skipped}", f"failed {summary.failed}"]
        if summary.ignored:
            parts.append(f"ignored {summary.ignored} non-image file{'s' if summary.ignored != 1 else ''}")
        line = ", ".join(parts) + f" in {summary.seconds:.1f}s"
        if summary.interrupted:
            how = "terminated" if summary.stopped_by == EXIT_TERMINATED else "interrupted"
            line += f"; {how}, {summary.not_started} not finished"
        print_line(line)


@contextmanager
def graceful_interrupt(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (finish the current file); the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # os.write, not rich: a signal handler may interrupt a print holding rich's lock.
        os.write(2, b"\nstopping after the current file (press Ctrl-C again to stop at once)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def upscale(
    inputs: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(help="Image files and/or folders to upscale.", show_default=False),
    ] = None,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="Output folder (mirrors input folders' trees), or a file for a single input; default: beside each input.",
        ),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="Output file name template: {stem}, {ext}, {scale}, {model}.")
    ] = DEFAULT_NAME,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="keep | png | jpg | webp | tiff ({ext} in --name).")
    ] = "keep",
    quality: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality (default 95; WebP 100 = lossless)."),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--glob", help="Only files in folders whose name (or relative path) matches, e.g. '*.png'."),
    ] = None,
    from_list: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--from-list", help="Read input paths from FILE, one a line ('-' for stdin)."),
    ] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs alone.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    alpha: Annotated[
        str, typer.Option("--alpha", help="Upscale transparency with: bicubic (fast, smooth) | model.")
    ] = "bicubic",
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse inputs larger than this (all frames together).")
    ] = DEFAULT_MAX_PIXELS,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; write nothing.")] = False,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    scale: ScaleOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    tile: TileOpt = "auto",
    tile_overlap: TileOverlapOpt = None,
    compile_model: CompileOpt = False,
    self_ensemble: SelfEnsembleOpt = False,
    registry: RegistryOpt = None,
    conv_scale: ConvScaleOpt = None,
    img_range: ImgRangeOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    offline: OfflineOpt = False,
    verbose: VerboseOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    cpus_per_worker: CpusPerWorkerOpt = None,
) -> None:
    """Upscale images and folders: hat upscale photos/ -r -o big/ --scale 4.

    Grey stays grey, 16-bit PNG/TIFF stay 16-bit, transparency is upscaled apart (--alpha). Animated GIF/WebP/PNG: every frame, timing kept. CMYK becomes sRGB. EXIF orientation is applied; ICC, EXIF and DPI (scaled) are kept where the format can hold them.

    Exit status: 0 all done, 1 some inputs failed or no image found, 2 usage error, 4 download failed, 130 interrupted, 143 terminated (SIGTERM). The first Ctrl-C finishes the current file, the second (or SIGTERM) stops at once; never a partial output.
    """  # one line per paragraph: the help formatter keeps line breaks
    started = time.perf_counter()
    # Damaged files make Pillow warn as well as fail; the failure is reported as one line already.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    tile_size = parse_tile(tile)
    ray_engine = cluster_engine(engine, ray_address, workers, gpus_per_worker, cpus_per_worker)  # None: local
    if alpha not in ("bicubic", "model"):
        raise ConfigError(f"--alpha {alpha!r}: use bicubic or model")
    paths = _input_paths(inputs, from_list)
    plan = _output_plan(output, paths, name, output_format, overwrite, skip_existing)
    sources, found = find_inputs(paths, recursive, glob, exclude=None if plan.output_is_file else output)

    show_progress = not (quiet or as_json or dry_run) and err_console.is_terminal
    progress = counter_bar(eta=True, console=err_console) if show_progress else None
    reporter = Reporter(as_json, quiet, progress)
    for result in found:
        reporter(result)

    not_started = 0
    options = RunOptions(
        max_pixels=max_pixels,
        alpha=alpha,  # type: ignore[arg-type]
        quality=quality,
        overwrite=overwrite,
        skip_existing=skip_existing,
    )
    if sources and ray_engine is not None:  # the actors load the model, the driver only names outputs
        spec = dict(model=model, weights=weights, scale=scale, registry=registry, conv_scale=conv_scale)
        spec |= dict(img_range=img_range, device=device, precision=precision, tile=tile_size, tile_overlap=tile_overlap)
        spec |= dict(compile=compile_model, self_ensemble=self_ensemble, offline=offline)
        spec["progress"] = download_progress(quiet or as_json)
        not_started = ray_engine.run(sources, plan, reporter, dry_run, verbose, options, spec)
    elif sources:  # the model loads once, and only when there is something to upscale
        from ..api import open_upscaler  # torch: only when a model runs (fast --help/--dry-run)

        upscaler = open_upscaler(
            model=model,
            weights=weights,
            scale=scale,
            registry=registry,
            conv_scale=conv_scale,
            img_range=img_range,
            device=device,
            precision=precision,
            tile=tile_size,
            tile_overlap=tile_overlap,
            compile=compile_model,
            self_ensemble=self_ensemble,
            offline=offline,
            progress=download_progress(quiet or as_json),
        )
        _attach(upscaler, reporter, progress, verbose)
        not_started = _run(upscaler, sources, plan, options, reporter, progress, dry_run)

    reporter.summary.not_started = not_started
    reporter.summary.seconds = time.perf_counter() - started
    reporter.finish(dry_run)
    raise typer.Exit(reporter.summary.exit_code)


def _input_paths(inputs: list[Path] | None, from_list: Path | None) -> list[Path]:
    paths = list(inputs or [])
    if from_list is not None:
        paths += _read_from_list(from_list)
    if not paths:
        raise ConfigError("no inputs: give image files or folders, or --from-list FILE")
    return paths


def _output_plan(
    output: Path | None, paths: list[Path], name: str, output_format: str, overwrite: bool, skip_existing: bool
) -> OutputPlan:
    """Where outputs go: ``-o`` is a file only for one input file and a name with an image extension."""
    if output is not None and output.exists() and not output.is_dir() and len(paths) > 1:
        raise ConfigError(f"-o {output}: is a file; with several inputs, -o must be a folder")
    output_is_file = (
        output is not None
        and len(paths) == 1
        and not paths[0].is_dir()
        and not output.is_dir()
        and format_for_suffix(output.suffix) is not None
    )
    return OutputPlan(
        output=output,
        name=name,
        format=output_format,  # type: ignore[arg-type]  (checked by OutputPlan)
        overwrite=overwrite,
        skip_existing=skip_existing,
        output_is_file=output_is_file,
    )


def _attach(upscaler: UpscalerBase, reporter: Reporter, progress: Progress | None, verbose: bool) -> None:
    """Tile progress into the files bar, and --verbose's per-image line."""
    upscaler.progress = TileProgress("tiles", bar=progress) if progress is not None else None
    if verbose:
        upscaler.on_stats = lambda stats: print_line(f"{reporter.current}: {stats.describe()}")
    reporter.summary.model = upscaler.name
    reporter.summary.scale = upscaler.scale


def _run(
    upscaler: UpscalerBase,
    sources: list,
    plan: OutputPlan,
    options: RunOptions,
    reporter: Reporter,
    progress: Progress | None,
    dry_run: bool,
) -> int:
    """Plan the outputs, then upscale (or list them); returns how many files were not started."""
    plan.model = upscaler.name
    jobs, planned = plan_jobs(sources, upscaler.scale, plan)
    for result in planned:
        reporter(result)
    if dry_run:
        for job in jobs:
            reporter(FileResult(job.source, job.output, "planned"))
        return 0
    # Temporaries of runs killed outright (SIGKILL, power loss) go before anything is written.
    sweep_folders([job.output.parent for job in jobs] + [r.output.parent for r in planned if r.output is not None])
    if not jobs:
        return 0
    if progress is not None and reporter.task is not None:
        progress.update(reporter.task, total=len(jobs))
    before = reporter.reported
    with graceful_interrupt(options.stop), progress if progress is not None else nullcontext():
        try:
            return run_batch(upscaler, jobs, reporter, options, on_start=reporter.starting)
        except KeyboardInterrupt as exc:  # second Ctrl-C or SIGTERM: stopped at once, temporaries gone
            reporter.summary.stopped_by = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
            return len(jobs) - (reporter.reported - before)


def _read_from_list(path: Path) -> list[Path]:
    if str(path) == "-":
        return read_list(sys.stdin)
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            return read_list(handle)
    except OSError as exc:
        raise ConfigError(f"--from-list {path}: cannot read ({exc.strerror or exc})") from exc
