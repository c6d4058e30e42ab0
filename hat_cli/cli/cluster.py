"""``hat upscale --engine ray``: the CLI half of the Ray cluster engine (:mod:`hat_cli.ray`).

The options are parsed for every ``hat upscale``, but Ray is imported only when ``--engine ray`` is
asked for: the local engine never imports it. The planning is the local engine's (``plan_jobs``);
only the run step differs, and results go to the same :class:`~hat_cli.cli.upscale.Reporter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from ..batch import FileResult, Job, RunOptions
from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError, Terminated
from .console import print_line

ENGINES = ("local", "ray")

EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine", metavar="local|ray", help="local: this process | ray: a Ray cluster (pip install 'hat-cli[ray]')."
    ),
]
RayAddressOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--ray-address",
        metavar="HOST:PORT",
        help="--engine ray: the cluster to use; default $RAY_ADDRESS, else a new local Ray instance.",
    ),
]
WorkersOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--workers",
        metavar="N",
        min=1,
        help="--engine ray: actors, each loading the model once (default: as many as the cluster fits).",
    ),
]
GpusPerWorkerOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--gpus-per-worker",
        metavar="G",
        min=0,
        help="--engine ray: GPUs per actor (default: 1 on a cluster with GPUs, else 0).",
    ),
]
CpusPerWorkerOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option(
        "--cpus-per-worker",
        metavar="C",
        help="--engine ray: CPUs per actor, the torch threads of a CPU worker (default 1; may be a fraction).",
    ),
]


@dataclass
class RayEngine:
    """``--engine ray`` and its settings."""

    address: str | None
    workers: int | None
    gpus_per_worker: float | None
    cpus_per_worker: float

    def run(
        self,
        jobs: Sequence[Job],
        reporter: Any,  # cli.upscale.Reporter: called with each result; summary, progress
        verbose: bool,
        options: RunOptions,
        spec: Mapping[str, Any],
    ) -> int:
        """Run planned jobs on Ray (the actors build the upscaler from ``spec``); returns how many
        files were not finished (Ctrl-C, SIGTERM)."""
        from ..ray import run_on_cluster

        settled = 0

        def on_result(result: FileResult) -> None:
            nonlocal settled
            settled += 1
            reporter(result)

        def on_ready(info: dict[str, Any]) -> None:
            print_line(
                f"ray: {info['workers']} worker(s) of {info['cpus_per_worker']:g} CPU, {info['gpus_per_worker']:g} GPU "
                f"on {info['nodes']} node(s) ({info['address']})"
            )

        progress = reporter.progress
        with progress if progress is not None else nullcontext():
            try:
                return run_on_cluster(
                    jobs,
                    dict(spec),
                    options,
                    address=self.address,
                    workers=self.workers,
                    gpus_per_worker=self.gpus_per_worker,
                    cpus_per_worker=self.cpus_per_worker,
                    on_result=on_result,
                    on_ready=on_ready if verbose else None,
                )
            except KeyboardInterrupt as exc:  # the cluster work is stopped and no temporary is left
                reporter.summary.stopped_by = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
                return len(jobs) - settled


def cluster_engine(
    engine: str,
    address: str | None,
    workers: int | None,
    gpus_per_worker: float | None,
    cpus_per_worker: float | None,
) -> RayEngine | None:
    """The ``--engine`` choice: None for the local engine (the Ray options are refused with it), or
    the Ray engine once Ray is known to be importable (else one line saying what to install)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: use local or ray")
    if engine == "local":
        values = {"--ray-address": address, "--workers": workers, "--gpus-per-worker": gpus_per_worker}
        given = [flag for flag, value in (values | {"--cpus-per-worker": cpus_per_worker}).items() if value is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to --engine ray only")
        return None
    if cpus_per_worker is not None and cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker {cpus_per_worker:g}: must be above 0")
    from ..ray import require_ray

    require_ray()
    return RayEngine(address, workers, gpus_per_worker, 1.0 if cpus_per_worker is None else cpus_per_worker)
