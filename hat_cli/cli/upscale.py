"""``hat upscale``: upscale image files and folders with a preset or any HAT checkpoint.

Built for scripts: one line per failure on stderr (the batch goes on), the exit codes of
:data:`hat_cli.errors.EXIT_CODES` (0 all done, 1 some inputs failed or none was an image, 2 usage,
130 Ctrl-C, 143 SIGTERM, ...); ``--json`` prints one object per file and a summary on stdout (also
when a configuration error stops the run). ``-`` reads one image from stdin, ``-o -`` writes it to
stdout. The first Ctrl-C finishes the current file and stops; a second one, or SIGTERM, stops at
once. Outputs are written to a temporary name and renamed, so no partial image is ever left under an
output name; temporaries of killed runs are removed from the output folders by the next run. On a
terminal, the file lines and messages are printed above one live progress bar. ``--engine ray`` runs
the same batch on a Ray cluster (:mod:`hat_cli.cli.cluster`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress

from ..atomic import sweep_folders
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
    run_options,
)
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError, HatError, Terminated, exit_code_table
from ..imagefiles import is_folder, path_kind
from ..imageio import DEFAULT_MAX_PIXELS, format_for_suffix, kept_suffix, suffix_for_bytes
from ..outscale import OutputSize
from ..samples import sample_path
from ..upscaling import UpscalerBase, upscaler_name
from .cluster import CpusPerWorkerOpt, EngineOpt, GpusPerWorkerOpt, RayAddressOpt, WorkersOpt, cluster_engine
from .console import (
    StdoutError,
    console,
    echo,
    err_console,
    one_line,
    print_error,
    print_line,
    print_warning,
)
from .options import (
    CompileOpt,
    ConvScaleOpt,
    DeviceOpt,
    GpuOpt,
    ImgRangeOpt,
    JsonOpt,
    ModelOpt,
    OfflineOpt,
    PrecisionOpt,
    QuietOpt,
    RegistryOpt,
    ScaleOpt,
    SelfEnsembleOpt,
    ThreadsOpt,
    TileOpt,
    TileOverlapOpt,
    VerboseOpt,
    WeightsOpt,
    parse_tile,
)
from .progress import TileProgress, counter_bar, download_progress

STDIO = "-"  # an input or -o naming stdin / stdout


class Reporter:
    """Turns results into lines, JSON and progress; called from the writer thread, hence the lock.

    While the progress bar is live on a terminal, file lines are printed through it (above the
    bar, which stays one bar at the bottom) instead of straight to the same terminal.
    """

    def __init__(self, as_json: bool, quiet: bool, progress: Progress | None, lines_to_stderr: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet
        self.progress = progress
        self.lines_to_stderr = lines_to_stderr  # stdout carries an image (-o -)
        self.task = progress.add_task("upscaling", total=0) if progress else None
        self.current: Path | None = None  # the file being upscaled (for --verbose lines)
        self.summary = Summary()
        self.reported = 0
        self.names: dict[str, str] = {}  # stdin/stdout stand-ins -> what to call them
        self._lock = threading.Lock()

    def __call__(self, result: FileResult) -> None:
        with self._lock:
            result = self._renamed(result)
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

    def _renamed(self, result: FileResult) -> FileResult:
        if not self.names:
            return result

        def name(path: Path | None) -> Path | None:
            return None if path is None else Path(self.names.get(str(path), str(path)))

        error = result.error
        for real, shown in self.names.items():
            error = error.replace(real, shown) if error else error
        return FileResult(
            name(result.input),
            name(result.output),
            result.status,
            result.seconds,
            error,
            result.size,
            result.input_size,
        )

    def print(self, text: str) -> None:
        """One plain line for the user: stdout, or through the live bar when both share the terminal."""
        if (
            self.progress is not None
            and self.progress.live.is_started
            and (console.is_terminal or self.lines_to_stderr)
        ):
            self.progress.console.print(one_line(text), markup=False, highlight=False, soft_wrap=True)
        else:
            print_line(text, err=self.lines_to_stderr)

    def _line(self, result: FileResult) -> None:
        if result.status == "done":
            size = f"{result.size[0]}x{result.size[1]}, " if result.size else ""
            self.print(f"{result.input} -> {result.output} ({size}{result.seconds:.1f}s)")
        elif result.status == "planned":
            self.print(f"{result.input} -> {result.output}")
        elif result.status == "skipped":
            self.print(f"{result.input}: skipped ({result.error})")

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


HELP = f"""Upscale images and folders: hat upscale photos/ -r -o big/ (x4 by default).

Grey stays grey, 16-bit PNG/TIFF stay 16-bit, transparency is upscaled apart (--alpha). Animated GIF/WebP/PNG: every frame, timing kept. CMYK becomes sRGB. EXIF orientation is applied; ICC, EXIF and DPI (scaled) are kept where the format can hold them.

Sizes: the network runs at its own scale (--scale); --outscale F (any factor > 0) or --width/--height (one keeps the aspect ratio, both give exactly that size) then resize its output with MATLAB's bicubic. '-' as the input reads one image from stdin; -o - writes the result to stdout.

The first Ctrl-C finishes the current file, the second stops at once; never a partial output.

\b
Exit status:
{exit_code_table()}
"""


def upscale(
    inputs: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(
            help="Image files and/or folders to upscale; '-' reads one image from stdin.",
            metavar="INPUT",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[str],  # noqa: UP045  (a string: a trailing '/' says "folder", which Path drops)
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Output folder (mirrors input folders' trees; a trailing / always means a folder), or a file for a single input (an image extension), or '-' for stdout; default: beside each input (--sample: the current folder).",
            show_default=False,
        ),
    ] = None,
    sample: Annotated[
        bool,
        typer.Option("--sample", help="Also upscale the bundled sample picture (Kodak parrots, 160x160)."),
    ] = False,
    outscale: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--outscale",
            metavar="F",
            help="Final factor, any number > 0 (3.5, 8): the network's scale, then a bicubic resize.",
            show_default=False,
        ),
    ] = None,
    width: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--width", metavar="W", help="Output width in pixels (aspect kept unless --height).", show_default=False
        ),
    ] = None,
    height: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--height", metavar="H", help="Output height in pixels (aspect kept unless --width).", show_default=False
        ),
    ] = None,
    name: Annotated[
        str,
        typer.Option("--name", metavar="TEMPLATE", help="Output file name template: {stem}, {ext}, {scale}, {model}."),
    ] = DEFAULT_NAME,
    output_format: Annotated[
        str, typer.Option("--format", "-f", metavar="FORMAT", help="keep | png | jpg | webp | tiff ({ext} in --name).")
    ] = "keep",
    quality: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--quality",
            min=1,
            max=100,
            metavar="N",
            help="JPEG/WebP quality, 1-100 (default 95; WebP 100 = lossless).",
            show_default=False,
        ),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--glob",
            metavar="PATTERN",
            help="Only files in folders whose name (or relative path) matches, e.g. '*.png'.",
            show_default=False,
        ),
    ] = None,
    from_list: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--from-list",
            metavar="FILE",
            help="Read input paths from FILE, one a line ('-' for stdin).",
            show_default=False,
        ),
    ] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave existing outputs alone.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    alpha: Annotated[
        str, typer.Option("--alpha", metavar="MODE", help="Upscale transparency with: bicubic (fast, smooth) | model.")
    ] = "bicubic",
    max_pixels: Annotated[
        int,
        typer.Option("--max-pixels", min=1, metavar="N", help="Refuse inputs larger than this (all frames together)."),
    ] = DEFAULT_MAX_PIXELS,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; write nothing.")] = False,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    scale: ScaleOpt = None,
    device: DeviceOpt = "auto",
    gpu: GpuOpt = None,
    precision: PrecisionOpt = "auto",
    tile: TileOpt = "auto",
    tile_overlap: TileOverlapOpt = None,
    threads: ThreadsOpt = None,
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
    started = time.perf_counter()
    to_stdout = output == STDIO
    reporter = Reporter(as_json, quiet, None, lines_to_stderr=to_stdout)
    try:
        with ExitStack() as stack:
            request = _Request(inputs, output, sample, from_list, to_stdout, stack)
            exit_code = _upscale(
                request,
                reporter,
                size=OutputSize(outscale, width, height),
                name=name,
                output_format=output_format,
                quality=quality,
                recursive=recursive,
                glob=glob,
                skip_existing=skip_existing,
                overwrite=overwrite,
                alpha=alpha,
                max_pixels=max_pixels,
                dry_run=dry_run,
                model=model,
                weights=weights,
                scale=scale,
                device=_device(device, gpu),
                precision=precision,
                tile=tile,
                tile_overlap=tile_overlap,
                threads=threads,
                compile_model=compile_model,
                self_ensemble=self_ensemble,
                registry=registry,
                conv_scale=conv_scale,
                img_range=img_range,
                offline=offline,
                verbose=verbose,
                engine=cluster_engine(engine, ray_address, workers, gpus_per_worker, cpus_per_worker),
            )
    except HatError as exc:  # a configuration error: the JSON stream still ends with its summary
        if as_json:
            reporter.summary.error = str(exc)
            reporter.summary.error_code = exc.exit_code
            reporter.summary.seconds = time.perf_counter() - started
            echo(json.dumps(reporter.summary.to_json()))
        raise
    reporter.summary.seconds = time.perf_counter() - started
    reporter.finish(dry_run)
    raise typer.Exit(exit_code)


class _Request:
    """The inputs and output as given, with stdin/stdout swapped for files in a private temporary
    folder (removed by ``stack``) and the sample picture added."""

    def __init__(
        self,
        inputs: list[Path] | None,
        output_arg: str | None,
        sample: bool,
        from_list: Path | None,
        to_stdout: bool,
        stack: ExitStack,
    ) -> None:
        paths = list(inputs or [])
        output = None if output_arg is None else Path(output_arg)
        # "-o name/" is a folder whatever its name looks like (Path("name/") forgets the slash).
        self.output_is_folder = output_arg is not None and output_arg.endswith(("/", os.sep))
        if from_list is not None:
            paths += _read_from_list(from_list)
        if sample:
            paths.append(sample_path())
            if output is None:
                output = Path.cwd()  # never inside the installed package
        if not paths:
            raise ConfigError("no inputs: give image files or folders, '-' for stdin, --from-list FILE or --sample")
        self.names: dict[str, str] = {}
        self.stdout_file: Path | None = None
        self._stack = stack
        self._folder: Path | None = None
        if sum(str(p) == STDIO for p in paths) > 1:
            raise ConfigError("'-' (stdin) can be given once")
        if any(str(p) == STDIO for p in paths):
            paths = [self._stdin_file() if str(p) == STDIO else p for p in paths]
        if to_stdout:
            if len(paths) != 1 or is_folder(paths[0]):
                raise ConfigError("-o - (stdout) takes exactly one input image")
            self.stdout_file = self.folder / f"stdout{kept_suffix(paths[0].suffix)}"
            self.names[str(self.stdout_file)] = "<stdout>"
            output = self.stdout_file
        self.paths = paths
        self.output = output

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="hat-stdio-")))
        return self._folder

    def _stdin_file(self) -> Path:
        if sys.stdin is None or sys.stdin.isatty():
            raise ConfigError("'-' reads an image from stdin, but stdin is a terminal: pipe an image in")
        data = sys.stdin.buffer.read()
        if not data:
            raise ConfigError("'-': stdin is empty (no image was piped in)")
        path = self.folder / f"stdin{suffix_for_bytes(data) or '.png'}"
        path.write_bytes(data)
        self.names[str(path)] = "<stdin>"
        return path

    def stdout_format(self, output_format: str) -> None:
        """-o - with --format: the temporary output takes that format's extension."""
        if self.stdout_file is not None and output_format != "keep":
            renamed = self.stdout_file.with_suffix(f".{output_format}")
            self.names = {(str(renamed) if k == str(self.stdout_file) else k): v for k, v in self.names.items()}
            self.stdout_file = self.output = renamed

    def send_stdout(self) -> None:
        """Copy the finished image to stdout, binary-safe."""
        if self.stdout_file is None or not self.stdout_file.is_file():
            return
        try:
            sys.stdout.buffer.write(self.stdout_file.read_bytes())
            sys.stdout.flush()
        except OSError as exc:  # a closed pipe ends quietly, a full disk is one line (the error boundary)
            raise StdoutError(exc) from exc


def _device(device: str, gpu: int | None) -> str:
    """``-g N`` is ``--device cuda:N`` (``-1``: the CPU), as in the ncnn upscalers."""
    if gpu is None:
        return device
    if device != "auto":
        raise ConfigError(f"give --device or -g/--gpu, not both (--device {device}, -g {gpu})")
    return "cpu" if gpu < 0 else f"cuda:{gpu}"


def _upscale(request: _Request, reporter: Reporter, **options) -> int:
    """The command's work once the inputs are known; returns the exit code."""
    o = options | {"tile": parse_tile(options["tile"])}  # a bad --tile fails before any work
    if o["alpha"] not in ("bicubic", "model"):
        raise ConfigError(f"--alpha {o['alpha']!r}: use bicubic or model")
    if request.stdout_file is not None and reporter.as_json:
        raise ConfigError("-o - writes the image to stdout: --json cannot share it")
    request.stdout_format(o["output_format"])
    reporter.names = request.names
    paths, output = request.paths, request.output
    plan = _output_plan(
        output, request.output_is_folder, paths, o["name"], o["output_format"], o["overwrite"], o["skip_existing"]
    )
    found = find_inputs(paths, o["recursive"], o["glob"], exclude=None if plan.output_is_file else output)
    _note_skipped_folders(found.subfolders_skipped, reporter)

    show_progress = not (reporter.quiet or reporter.as_json or o["dry_run"]) and err_console.is_terminal
    progress = counter_bar(eta=True, console=err_console) if show_progress else None
    reporter.progress = progress
    reporter.task = progress.add_task("upscaling", total=0) if progress else None
    for result in found.results:
        reporter(result)

    not_started = 0
    if found.sources:
        not_started = _upscale_sources(found.sources, plan, reporter, progress, request, o)
    reporter.summary.not_started = not_started
    if not o["dry_run"] and reporter.summary.failed == 0:
        request.send_stdout()
    return reporter.summary.exit_code


def _upscale_sources(
    sources: list, plan: OutputPlan, reporter: Reporter, progress: Progress | None, request: _Request, o: dict
) -> int:
    """Name the outputs from the model choice (no network is built for that: ``--dry-run`` and a
    rerun with nothing left to do stay light), then run the jobs locally or on Ray; returns how
    many files were not finished."""
    from ..choice import choose_model  # torch-free for presets and bicubic

    keys = ("model", "weights", "scale", "registry", "conv_scale", "img_range")
    choice = choose_model(**{key: o[key] for key in keys})
    name = upscaler_name(choice.name, o["self_ensemble"] and not choice.is_bicubic)
    reporter.summary.model, reporter.summary.scale = name, choice.scale
    if o["size"].active:
        reporter.summary.outscale = o["size"].outscale
    jobs = _plan(sources, plan, name, o["size"].label(choice.scale), reporter, o["dry_run"])
    if not jobs:
        return 0
    options = run_options(plan, max_pixels=o["max_pixels"], alpha=o["alpha"], quality=o["quality"], size=o["size"])
    engine = {"device": o["device"], "precision": o["precision"], "tile": o["tile"]}
    engine |= {"tile_overlap": o["tile_overlap"], "compile": o["compile_model"], "self_ensemble": o["self_ensemble"]}
    download = download_progress(reporter.quiet or reporter.as_json)
    if o["engine"] is not None:  # Ray: the actors build the model from this spec
        from ..ray import actor_spec

        spec = actor_spec(choice, offline=o["offline"], progress=download, registry=o["registry"], **engine)
        return o["engine"].run(jobs, reporter, o["verbose"], options, spec)
    _set_threads(o["threads"], o["verbose"])
    from ..api import build_upscaler  # torch: only when a model runs

    upscaler = build_upscaler(choice, offline=o["offline"], progress=download, **engine)
    _attach(upscaler, reporter, progress, o["verbose"])
    return _run(upscaler, jobs, options, reporter, progress)


def _set_threads(threads: int | None, verbose: bool) -> None:
    from ..threads import set_threads

    count = set_threads(threads)
    if verbose:
        print_line(f"CPU threads: {count} ({'--threads' if threads is not None else 'available cores'})")


def _plan(sources: list, plan: OutputPlan, name: str, label: str, reporter: Reporter, dry_run: bool) -> list[Job]:
    """The jobs to run, after reporting the outputs that are skipped or refused (and, for a dry
    run, the planned ones: then nothing is left to run). Temporaries that killed runs left in the
    output folders are swept first."""
    plan.model = name
    jobs, planned = plan_jobs(sources, label, plan)
    for result in planned:
        reporter(result)
    if dry_run:
        for job in jobs:
            reporter(FileResult(job.source, job.output, "planned"))
        return []
    folders = [job.output.parent for job in jobs] + [r.output.parent for r in planned if r.output is not None]
    sweep_folders(folder for folder in folders if folder.is_dir())
    if jobs and reporter.progress is not None and reporter.task is not None:
        reporter.progress.update(reporter.task, total=len(jobs))
    return jobs


def _note_skipped_folders(skipped: dict[Path, int], reporter: Reporter) -> None:
    total = sum(skipped.values())
    reporter.summary.subfolders_skipped = total
    if total and not reporter.quiet and not reporter.as_json:
        where = ", ".join(str(folder) for folder in skipped)
        print_warning(f"{where}: skipped {total} subfolder{'s' if total != 1 else ''} (add -r to upscale them too)")


def _output_plan(
    output: Path | None,
    folder_named: bool,
    paths: list[Path],
    name: str,
    output_format: str,
    overwrite: bool,
    skip_existing: bool,
) -> OutputPlan:
    """Where outputs go: ``-o`` is a file only for one input file and a name with an image extension
    (``folder_named``: the argument ended in ``/``, a folder whatever its name)."""
    several = len(paths) > 1 or any(is_folder(p) for p in paths)
    kind = None if output is None else _output_kind(output)
    if output is not None and kind is not None:  # (kind is set whenever output is)
        _check_output_arg(output, kind, folder_named, several)
    output_is_file = (
        output is not None
        and not several
        and not folder_named
        and kind != "folder"
        and format_for_suffix(output.suffix) is not None
    )
    if (
        output_is_file
        and output_format != "keep"
        and format_for_suffix(output.suffix) != format_for_suffix(f".{output_format}")
    ):
        raise ConfigError(
            f"-o {output} and --format {output_format} disagree: name the file .{output_format} or drop --format"
        )
    return OutputPlan(
        output=output,
        name=name,
        format=output_format,  # type: ignore[arg-type]  (checked by OutputPlan)
        overwrite=overwrite,
        skip_existing=skip_existing,
        output_is_file=output_is_file,
    )


def _output_kind(output: Path) -> str:
    """What -o names now: 'folder', 'file' or 'missing'; a name the system refuses is a usage error."""
    try:
        return path_kind(output)
    except OSError as exc:
        raise ConfigError(f"-o {output}: unusable name ({exc.strerror or exc})") from None


def _check_output_arg(output: Path, kind: str, folder_named: bool, several: bool) -> None:
    """Refuse an ``-o`` that would silently become something other than what its name says (D18)."""
    if kind == "file":
        if several or folder_named:
            raise ConfigError(
                f"-o {output}: is a file; {'with several inputs, ' if several else ''}-o must be a folder"
            )
        if format_for_suffix(output.suffix) is None:
            raise ConfigError(
                f"-o {output}: is a file, and not an image hat writes: name an image (.png, .jpg, .webp, .tiff) "
                "or a folder"
            )
    if kind != "missing" or folder_named or not output.suffix:
        return
    if format_for_suffix(output.suffix) is None:
        raise ConfigError(
            f"-o {output}: no such folder, and {output.suffix} is not an image format hat writes: "
            f"write -o {output}/ for a new folder of that name, or use .png, .jpg, .webp or .tiff for a file"
        )
    if several:
        raise ConfigError(
            f"-o {output}: looks like an image file, but several inputs need a folder "
            f"(give a folder name without an image extension, or end it with /)"
        )


def _attach(upscaler: UpscalerBase, reporter: Reporter, progress: Progress | None, verbose: bool) -> None:
    """Tile progress into the files bar, and --verbose's per-image line."""
    upscaler.progress = TileProgress("tiles", bar=progress) if progress is not None else None
    if verbose:
        upscaler.on_stats = lambda stats: print_line(f"{reporter.current}: {stats.describe()}")


def _run(
    upscaler: UpscalerBase, jobs: list[Job], options: RunOptions, reporter: Reporter, progress: Progress | None
) -> int:
    """Upscale the jobs in this process; returns how many files were not finished."""
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
