"""The Ray cluster engine: the same batch as ``hat upscale``, run on a Ray cluster with Ray Data.

``hat upscale ... --engine ray`` plans on the driver exactly like the local engine
(:func:`hat_cli.batch.find_inputs` and :func:`hat_cli.batch.plan_jobs`: same output names, same
refusals, same skip rules), then hands the jobs - two paths each, never pixels - to Ray Data::

    ray.data.from_items(jobs, one block per file) -> map_batches(UpscaleFiles, actor pool) -> records

Each actor builds the upscaler once (:func:`hat_cli.api.open_upscaler`, the same options as the local
engine) and runs :func:`hat_cli.batch.process_job` on every file it gets: it reads the input, upscales
it and writes the output itself through the atomic writer, and returns a small record (the fields of
:meth:`hat_cli.batch.FileResult.to_json` and the output size). The driver streams the records back as
files finish - in completion order, not input order - to the callback the local engine reports to.

Faults (the Ray settings are set explicitly in :func:`run_on_cluster`):

* a file that fails for its own reason (corrupt input, unwritable output) is a ``failed`` record,
  never an exception, so it is attempted once;
* an actor whose process or node dies is restarted elsewhere (``max_restarts=-1``) and the files it
  held are run again there (``max_task_retries=-1``); application errors are never retried
  (``DataContext.actor_task_retry_on_errors = False``) and an exception escaping the actor - a bug,
  not a file's fault - ends the run (``max_errored_blocks = 0``). The killed writer's temporary file
  is removed by the next write into its folder and by the driver's sweep at the end;
* ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM turned into one) on the driver stops the pipeline,
  disconnects from Ray (the cluster kills the job's actors), removes the temporaries the killed
  writers left in every output folder the driver can see, and is raised again. Outputs are atomic,
  so a rerun with ``skip_existing`` resumes where the run stopped.

Every node must see the inputs and outputs under the same paths (one machine, or a shared file
system); the driver sends absolute paths. Importing this module never imports Ray: the functions
that need it do, and say in one line how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import sweep_folders
from .batch import (
    DEFAULT_NAME,
    FileResult,
    Job,
    OutputFormat,
    OutputPlan,
    RunOptions,
    Summary,
    find_inputs,
    plan_jobs,
    process_job,
    run_options,
)
from .choice import ModelChoice, choose_model, fetch_checkpoint
from .errors import ClusterError, ConfigError, first_line
from .imageio import DEFAULT_MAX_PIXELS
from .upscaling import UpscalerBase, upscaler_name

INSTALL_HINT = "--engine ray needs Ray: pip install 'hat-cli[ray]'"

# open_upscaler's keyword arguments, which an actor builds its upscaler from (the driver's download
# progress callback stays on the driver).
UPSCALER_KEYS = (
    "model",
    "weights",
    "scale",
    "registry",
    "conv_scale",
    "img_range",
    "offline",
    "device",
    "precision",
    "tile",
    "tile_overlap",
    "tile_batch",
    "memory_budget",
    "compile",
    "self_ensemble",
)
# RunOptions' fields an actor uses (``stop`` is the driver's: an Event does not travel).
OPTION_KEYS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name != "stop")
# What UpscaleFiles returns for each file: FileResult.to_json's scalar fields, and the input's and
# the output's sizes as flat columns (Arrow tables hold them better than lists with gaps).
RECORD_FIELDS = (
    "type",
    "input",
    "output",
    "status",
    "seconds",
    "error",
    "width",
    "height",
    "input_width",
    "input_height",
)

# Ray settings (see the module doc and benchmarks/NOTES-ray.md).
FAULT_TOLERANCE = {"max_restarts": -1, "max_task_retries": -1}
TASKS_IN_FLIGHT_PER_ACTOR = 2  # one running, one queued: no idle gap, and little work waits on a slow actor
LOCAL_OBJECT_STORE_BYTES = 200_000_000  # only paths and records travel: a small store is plenty
# Ray's chatter on the driver's stderr, which the CLI keeps for one line per failure: the C++ core
# logs an error-level line on every actor start (constructor arguments in the object store,
# ray-project/ray#53727), so processes started by ray.init log only fatal errors unless
# RAY_BACKEND_LOG_LEVEL is set; Ray Data's console lines (tracebacks too) only go to its log file.
BACKEND_LOG_ENV = "RAY_BACKEND_LOG_LEVEL"
QUIET_LOGGERS = ("ray.data",)
SWEEP_WAIT_S = 10.0  # after a stop: how long to wait for killed writers' locks to drop
CONNECT_TIMEOUT_S = 10.0  # the TCP check of a cluster address before ray.init

RecordBatch = dict[str, Any]
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)\w*): (.+)$")
_HOST_PORT = re.compile(r"^\[?([\w.:-]+?)\]?:(\d+)$")


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or one :class:`ConfigError` line saying what to install."""
    try:
        import ray
        import ray.data  # the data extra (pandas, pyarrow)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------------------------------- actors
def split_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(open_upscaler kwargs, RunOptions kwargs)`` from one flat spec; unknown keys are an error."""
    unknown = sorted(set(spec) - set(UPSCALER_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"UpscaleFiles: unknown option(s) {', '.join(unknown)}")
    upscaler = {key: value for key, value in spec.items() if key in UPSCALER_KEYS}
    options = {key: value for key, value in spec.items() if key in OPTION_KEYS}
    return upscaler, options


def options_spec(options: RunOptions) -> dict[str, Any]:
    """The RunOptions fields an actor needs, as plain values."""
    return {key: getattr(options, key) for key in OPTION_KEYS}


def record_of(result: FileResult) -> dict[str, Any]:
    """One file's record: :meth:`FileResult.to_json`'s fields, the sizes as flat columns."""
    record = result.to_json()
    width, height = record.pop("output_size") or (None, None)
    input_width, input_height = record.pop("input_size") or (None, None)
    return record | {"width": width, "height": height, "input_width": input_width, "input_height": input_height}


class UpscaleFiles:
    """Upscale the files a Ray Data batch names: a callable class for ``Dataset.map_batches``.

    ::

        import ray
        from hat_cli.ray import UpscaleFiles

        ds = ray.data.from_items([{"source": "/data/in/a.png", "output": "/data/out/a_x4.png"}, ...])
        ds = ds.map_batches(
            UpscaleFiles,
            fn_constructor_kwargs={"model": "hat-l", "scale": 4, "tile": 512},  # see below
            batch_size=1,  # one file per call: per-file results and retries
            compute=ray.data.ActorPoolStrategy(size=4),  # 4 actors, the model loaded once in each
            num_gpus=1,  # one GPU per actor
        )
        for record in ds.iter_rows():  # as files finish
            print(record["input"], record["status"], record["error"])

    The constructor takes :func:`hat_cli.api.open_upscaler`'s keyword arguments (``model``,
    ``weights``, ``scale``, ``device``, ``precision``, ``tile``, ``tile_overlap``, ``self_ensemble``,
    ...) and :class:`hat_cli.batch.RunOptions`' fields (``max_pixels``, ``alpha``, ``quality``,
    ``overwrite``, ``identical_is_done``: set it where Ray may retry a task whose worker died after
    writing, as ``run_on_cluster`` does); it builds the upscaler once per actor.

    Each call takes a batch with ``source`` and ``output`` columns (paths that every node sees;
    relative ones are relative to the worker's directory) and returns one row per file with the
    fields of ``hat upscale --json``'s records - ``type``, ``input``, ``output`` (None unless done),
    ``status`` (``done``, ``failed``, or ``skipped`` with ``skip_existing``), ``seconds``, ``error``
    - the output's ``width`` and ``height`` and the input's ``input_width`` and ``input_height``,
    and every other column of the batch unchanged. The output is written by the actor
    through the atomic writer; pixels never enter the batch. A file's own failure (unreadable,
    corrupt, unwritable output, out of memory) is a ``failed`` row, never an exception.
    """

    def __init__(self, **spec: Any) -> None:
        from .api import open_upscaler  # torch: in the actor, not where the pipeline is defined

        upscaler, options = split_spec(spec)
        self.upscaler: UpscalerBase = open_upscaler(**upscaler)
        self.options = RunOptions(**options)

    def upscale_file(self, source: str | os.PathLike[str], output: str | os.PathLike[str]) -> dict[str, Any]:
        """Read, upscale and write one file; its record."""
        return record_of(process_job(self.upscaler, Job(Path(source), Path(output)), self.options))

    def __call__(self, batch: Mapping[str, Any]) -> RecordBatch:
        records = [self.upscale_file(str(s), str(o)) for s, o in zip(batch["source"], batch["output"], strict=True)]
        passed = {key: list(values) for key, values in batch.items() if key not in ("source", *RECORD_FIELDS)}
        return passed | {key: [record[key] for record in records] for key in RECORD_FIELDS}


# ---------------------------------------------------------------------------------------- driver
def actor_spec(
    choice: ModelChoice,
    offline: bool = False,
    progress: Callable[..., Any] | None = None,
    registry: str | os.PathLike[str] | None = None,
    **engine: Any,
) -> dict[str, Any]:
    """The keyword arguments every actor builds its upscaler from (:func:`hat_cli.api.open_upscaler`),
    for the model ``choice`` names, with what the driver's environment decided made explicit (the
    preset's full name and scale, the registry file, offline, absolute paths), so every actor builds
    exactly the model the outputs were named after. A preset's checkpoint is fetched into the
    driver's cache (verified) first. ``engine`` (device, precision, tile, self_ensemble...) passes
    through: the actors check it where the model runs."""
    from .registry import REGISTRY_ENV
    from .store import is_offline

    unknown = sorted(set(engine) - set(UPSCALER_KEYS))
    if unknown:
        raise ConfigError(f"unknown upscaler option(s) {', '.join(unknown)}")
    offline = is_offline(offline)
    spec: dict[str, Any] = {**engine, "offline": offline}
    if choice.is_bicubic:
        return spec | {"model": choice.name, "scale": choice.scale}
    if choice.weights is not None:
        return spec | {"weights": str(choice.weights.absolute()), **choice.hidden}
    fetch_checkpoint(choice, offline=offline, progress=progress)
    registry = registry or os.environ.get(REGISTRY_ENV) or None
    registry_file = None if registry is None else str(Path(registry).absolute())
    return spec | {"model": choice.name, "scale": choice.scale, "registry": registry_file}


def describe_upscaler(
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    scale: int | None = None,
    registry: str | os.PathLike[str] | None = None,
    conv_scale: float | None = None,
    img_range: float | None = None,
    offline: bool = False,
    progress: Callable[..., Any] | None = None,
    **engine: Any,
) -> tuple[str, int, dict[str, Any]]:
    """``(name, scale, spec)`` of the upscaler :func:`hat_cli.api.open_upscaler` would build, without
    building it (:func:`hat_cli.choice.choose_model`, the same errors): the output names need the
    name and scale; the actors build the model from ``spec`` (:func:`actor_spec`)."""
    choice = choose_model(model, weights, scale, registry, conv_scale, img_range)
    spec = actor_spec(choice, offline=offline, progress=progress, registry=registry, **engine)
    name = upscaler_name(choice.name, bool(engine.get("self_ensemble")) and not choice.is_bicubic)
    return name, choice.scale, spec


def _absolute(path: Path) -> Path:
    """``path`` from the driver's working directory (not resolved: symlinks stay as given)."""
    return path if path.is_absolute() else Path.cwd() / path


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None) -> Iterator[bool]:
    """Connected to Ray inside: an existing connection of this process is used as it is (yields
    False: not ours to end); otherwise ``address``, else ``$RAY_ADDRESS``, else a new local instance,
    ended on exit (yields True)."""
    if ray.is_initialized():
        yield False
        return
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    _check_reachable(target)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if target == "local":  # a private instance: all this machine's CPUs and GPUs
        kwargs |= {"include_dashboard": False, "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    quiet = BACKEND_LOG_ENV not in os.environ  # Ray's C++ log lines on the driver's stderr: only fatal ones
    if quiet:
        os.environ[BACKEND_LOG_ENV] = "fatal"
    try:
        ray.init(address=target, **kwargs)
    except BaseException as exc:  # Ctrl-C during a local start included: nothing half-started stays
        with contextlib.suppress(Exception):
            ray.shutdown()
        if not isinstance(exc, Exception):
            raise
        where = "start a local Ray instance" if target == "local" else f"connect to the Ray cluster at {target}"
        raise ClusterError(f"cannot {where}: {first_line(exc)}") from None
    finally:
        if quiet:
            del os.environ[BACKEND_LOG_ENV]
        if main and sigterm is not None:  # ray.init replaces it with sys.exit: keep the caller's
            signal.signal(signal.SIGTERM, sigterm)
    try:
        with _errors_to_stderr():
            yield True
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A ``host:port`` that refuses connections is one line now (``ray.init`` would retry for minutes)."""
    match = _HOST_PORT.match(address)
    if match is None:  # "local", "auto", "ray://...": ray.init knows
        return
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


@contextlib.contextmanager
def _errors_to_stderr() -> Iterator[None]:
    """Ray prints the cluster's error messages for this job (a task retried after its worker died,
    say) on the driver's *stdout*, which is the CLI's ``--json`` stream: send them to stderr."""
    try:
        from ray._private import worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray version: nothing to redirect
        yield
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:  # one line each: no tracebacks
        lines = [str(line).strip().splitlines()[0] for line in data.get("lines", []) if str(line).strip()]
        original({**data, "lines": lines, "is_err": True}, ignore_prefix)

    ray_worker.print_to_stdstream = to_stderr
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def _auto_gpus(ray: Any, spec: Mapping[str, Any]) -> float:
    """One GPU per worker when the cluster has GPUs and the device may be one (auto or cuda)."""
    device = str(spec.get("device") or "auto")
    if device.startswith(("cpu", "mps")) or spec.get("model") == "bicubic":
        return 0.0
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _pool_size(ray: Any, workers: int | None, gpus: float, cpus: float, files: int) -> int:
    """How many actors: ``workers``, or as many as the cluster's resources fit; at most one per file."""
    have = ray.cluster_resources()
    have_cpus, have_gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    fit = math.floor(have_cpus / cpus + 1e-9) if cpus else math.inf
    if gpus:
        fit = min(fit, math.floor(have_gpus / gpus + 1e-9))
    if fit < 1 or (workers is not None and workers > fit):
        asked = f"--workers {workers} x " if workers is not None else "a worker with "
        raise ClusterError(
            f"{asked}{cpus:g} CPU, {gpus:g} GPU does not fit the Ray cluster "
            f"({have_cpus:g} CPUs, {have_gpus:g} GPUs; see --cpus-per-worker, --gpus-per-worker)"
        )
    size = workers if workers is not None else int(min(fit, files))
    return max(1, min(size, files))


def _fault_tolerance(map_batches: Callable[..., Any]) -> dict[str, int]:
    """The actor retry settings, set explicitly while ``map_batches`` takes them (Ray 2.60 warns that
    passing them is deprecated; they equal Ray Data's actor-pool defaults, which apply otherwise)."""
    params = inspect.signature(map_batches).parameters.values()
    return dict(FAULT_TOLERANCE) if any(p.kind is p.VAR_KEYWORD for p in params) else {}


def _pipeline(ray: Any, rows: list[dict[str, Any]], spec: Mapping[str, Any], size: int, gpus: float, cpus: float):
    """The dataset: one block per file, UpscaleFiles on a fixed pool of ``size`` actors."""
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # each file: its own task and retry
    context = ds.context  # this dataset's copy: the process-wide DataContext is left alone
    context.actor_task_retry_on_errors = False  # a file's own error is a record, never retried
    context.max_errored_blocks = 0  # an exception escaping the actor (a bug) ends the run
    context.enable_progress_bars = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.* is deprecated")
        return ds.map_batches(
            UpscaleFiles,
            fn_constructor_kwargs=dict(spec),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT_PER_ACTOR),
            num_cpus=cpus,
            num_gpus=gpus or None,
            **_fault_tolerance(ds.map_batches),
        )


def _result(job: Job, sent: Job, row: Mapping[str, Any]) -> FileResult:
    """The FileResult of a record, with the job's own spelling of its paths (the actor saw absolute ones)."""
    error = row.get("error")
    if error:
        pairs = ((str(sent.output), str(job.output)), (str(sent.source), str(job.source)))
        for absolute, given in sorted(pairs, key=lambda pair: len(pair[0]), reverse=True):  # longer first
            error = error.replace(absolute, given)
    done = row["status"] == "done"
    size = _pair(row, "width", "height") if done else None
    seconds = row.get("seconds")
    return FileResult(
        job.source,
        job.output if row.get("output") is not None else None,
        row["status"],
        None if seconds is None else float(seconds),
        error or None,
        size,
        _pair(row, "input_width", "input_height"),
    )


def _pair(row: Mapping[str, Any], first: str, second: str) -> tuple[int, int] | None:
    a, b = row.get(first), row.get(second)
    return None if a is None or b is None else (int(a), int(b))


def run_on_cluster(
    jobs: Sequence[Job],
    spec: Mapping[str, Any],
    options: RunOptions | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    on_result: Callable[[FileResult], None] | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run ``jobs`` (from :func:`hat_cli.batch.plan_jobs`) on a Ray cluster; ``on_result`` gets one
    :class:`FileResult` per job as files finish (completion order). Returns how many jobs have no
    result because the run was stopped (``stop``, default ``options.stop``: checked as each result
    arrives).

    ``spec``: :func:`hat_cli.api.open_upscaler`'s keyword arguments (see :func:`describe_upscaler`,
    which makes them explicit); every actor builds that upscaler once. ``address``: a Ray address
    (``host:port``); default ``$RAY_ADDRESS``, else a new local Ray instance (all this machine's CPUs
    and GPUs), ended afterwards. Inside a process already connected to Ray, that connection is used.
    ``workers`` actors of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each (default: one
    GPU per worker on a cluster with GPUs, else none); default: as many as the cluster fits, at most
    one per job. ``on_ready`` hears ``{"workers", "cpus_per_worker", "gpus_per_worker", "nodes",
    "address"}`` once connected.

    A ``KeyboardInterrupt`` stops the work, disconnects, removes the temporaries of the killed
    writers in the output folders, and propagates. A run Ray cannot complete (cannot connect, too
    few resources, the actors cannot start) is a :class:`ClusterError`.
    """
    options = options or RunOptions()
    stop = stop or options.stop
    on_result = on_result or (lambda result: None)
    _check_pool_options(workers, cpus_per_worker, gpus_per_worker)
    if not jobs:
        return 0
    ray = require_ray()
    # A task retried after its worker died may find the output its first attempt finished.
    actor_spec = {**spec, **options_spec(dataclasses.replace(options, identical_is_done=True))}
    split_spec(actor_spec)  # unknown keys: one error here, not one per actor
    sent = [Job(_absolute(job.source), _absolute(job.output)) for job in jobs]
    folders = {job.output.parent for job in sent}
    sweep_folders(folder for folder in folders if folder.is_dir())  # what killed runs left before

    reported: set[int] = set()
    with _quiet_console(), _ray_session(ray, address) as owned:
        gpus = _auto_gpus(ray, actor_spec) if gpus_per_worker is None else float(gpus_per_worker)
        size = _pool_size(ray, workers, gpus, cpus_per_worker, len(jobs))
        if on_ready is not None:
            where = address or os.environ.get("RAY_ADDRESS") or ("local" if owned else "connected")
            on_ready(_pool_description(ray, size, cpus_per_worker, gpus, where))
        rows = [{"index": i, "source": str(job.source), "output": str(job.output)} for i, job in enumerate(sent)]
        records = iter(_pipeline(ray, rows, actor_spec, size, gpus, cpus_per_worker).iter_rows())
        try:
            for row in records:
                index = int(row["index"])
                if index in reported:  # never twice, whatever a retry did
                    continue
                reported.add(index)
                on_result(_result(jobs[index], sent[index], row))
                if stop.is_set():
                    break
        except (KeyboardInterrupt, Exception) as exc:
            _close(records)
            if owned:
                ray.shutdown()  # the job ends: the cluster kills its actors
            sweep_folders(folders, SWEEP_WAIT_S)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise ClusterError(_cluster_failure(exc)) from exc
        _close(records)
    stopped = stop.is_set() and len(reported) < len(jobs)
    sweep_folders(folders, SWEEP_WAIT_S if stopped else 0.0)
    if stopped:
        return len(jobs) - len(reported)
    for index, job in enumerate(jobs):  # a pipeline that ended without a file's record: say so
        if index not in reported:
            on_result(FileResult(job.source, None, "failed", None, f"{job.source}: no result came back from Ray"))
    return 0


def _check_pool_options(workers: int | None, cpus_per_worker: float, gpus_per_worker: float | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    if cpus_per_worker <= 0 or (gpus_per_worker or 0) < 0:
        raise ConfigError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0")


def _pool_description(ray: Any, size: int, cpus: float, gpus: float, address: str) -> dict[str, Any]:
    """What ``on_ready`` hears: the pool and the cluster it runs on."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return {"workers": size, "cpus_per_worker": cpus, "gpus_per_worker": gpus, "nodes": nodes, "address": address}


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """Ray Data's console handlers silent for the run (its log file keeps everything): a failed run
    is one :class:`ClusterError` line, not Ray Data's tracebacks."""
    handlers = [
        handler
        for name in QUIET_LOGGERS
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)
    ]
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def _close(records: Iterator[Any]) -> None:
    """End the dataset iteration (Ray Data stops its executor and the actor pool)."""
    close = getattr(records, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def _cluster_failure(exc: BaseException) -> str:
    """A failed Ray run in one line. Ray wraps the error that ended it with tracebacks: the last
    ``SomeError: message`` line names the cause (just the message for hat's own errors, such as an
    actor that could not build its upscaler)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    start = any(getattr(e, "actor_init_failed", False) or "creation task" in str(e) for e in chain)
    what = "the Ray workers could not start" if start else "the Ray run failed"
    for error in chain:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        for line in reversed(lines):
            if (match := _EXCEPTION_LINE.match(line)) is not None:
                name, message = match.groups()
                return f"{what}: {message if name.startswith('hat_cli.') else f'{name}: {message}'}"
    return f"{what}: {first_line(exc)}"


# ---------------------------------------------------------------------------------------- folders
def upscale_folder_on_cluster(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str] | None = None,
    *,
    recursive: bool = False,
    pattern: str | None = None,
    name: str = DEFAULT_NAME,
    format: OutputFormat = "keep",
    overwrite: bool = False,
    skip_existing: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    alpha: str = "bicubic",
    quality: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    on_result: Callable[[FileResult], None] | None = None,
    **upscaler: Any,
) -> Summary:
    """Upscale folders and files on a Ray cluster, as ``hat upscale INPUTS -o OUTPUT --engine ray``.

    ::

        from hat_cli.ray import upscale_folder_on_cluster

        summary = upscale_folder_on_cluster("frames/", "frames_x4/", model="hat-l", scale=4,
                                            address="10.0.0.1:6379", recursive=True, skip_existing=True)
        print(summary.done, summary.failed, summary.exit_code)

    Inputs are listed and outputs named exactly like the CLI (``output`` is a folder that mirrors
    input folders' trees, or None for beside each input; ``name`` takes ``{stem}``, ``{ext}``,
    ``{scale}``, ``{model}``). ``upscaler``: :func:`hat_cli.api.open_upscaler`'s keyword arguments
    (``model``, ``weights``, ``scale``, ``device``, ``tile``...). ``on_result`` hears every file
    (done, failed, skipped, ignored) as it is settled. Returns the run's :class:`Summary`; see
    :func:`run_on_cluster` for the cluster arguments and what a ``KeyboardInterrupt`` does.
    """
    started = time.perf_counter()
    given = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    paths = [Path(p) for p in given]
    out = None if output is None else Path(output)
    plan = OutputPlan(output=out, name=name, format=format, overwrite=overwrite, skip_existing=skip_existing)
    options = run_options(plan, max_pixels=max_pixels, alpha=alpha, quality=quality)
    sources, found = find_inputs(paths, recursive, pattern, exclude=out)
    summary = Summary()

    def report(result: FileResult) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(result)

    for result in found:
        report(result)
    if sources:
        summary.model, scale, spec = describe_upscaler(**upscaler)
        summary.scale = scale
        plan.model = summary.model
        jobs, planned = plan_jobs(sources, scale, plan)
        for result in planned:
            report(result)
        summary.not_started = run_on_cluster(
            jobs,
            spec,
            options,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            on_result=report,
        )
    summary.seconds = time.perf_counter() - started
    return summary
