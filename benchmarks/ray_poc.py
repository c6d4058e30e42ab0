"""Proof of concept for ``hat upscale --engine ray``: Ray Data stateful batch inference over files.

What the real engine will do, with a tiny torch model standing in for HAT:

* a dataset of input *paths* (``ray.data.from_items``, one row per block so each file is its own
  task and its own unit of retry) - pixels never travel through the object store;
* ``map_batches`` with a callable class: each actor builds the model once, then for every path reads
  the image, runs the model and writes the output itself with ``hat_cli.atomic.atomic_write``
  (flock'ed ``.<name>.<random>.hat-part`` beside the target, fsync, ``os.replace``), returning only
  a small record (path, output, status, seconds, error, node, pid);
* a file that fails for its own reason (corrupt input) is caught in the actor and comes back as a
  ``failed`` record: no exception reaches Ray, so nothing is retried for it;
* actor fault tolerance set explicitly: ``max_restarts=-1`` (an actor lost with its node is
  recreated elsewhere) and ``max_task_retries=-1`` (its in-flight tasks are resubmitted to the new
  actor); Ray Data's application-error retries stay off (``actor_task_retry_on_errors=False``);
* the driver streams records as they complete (``iter_rows``) and prints one JSON line per file,
  then sweeps the temporaries of writers that were killed (``hat_cli.atomic.sweep_stale``).

Commands::

    python benchmarks/ray_poc.py make-inputs DIR --count 30 --corrupt 1
    python benchmarks/ray_poc.py run --input DIR --output OUT [--address 127.0.0.1:PORT | local]
    python benchmarks/ray_poc.py plain --input DIR --output OUT     # the same work in a plain loop

``run`` prints JSON lines: ``{"event": "record", ...}`` per file as it completes, ``{"event": "ready",
...}`` once connected, and ``{"event": "summary", ...}`` at the end (or ``{"event": "interrupted"}``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hat_cli.atomic import atomic_write, sweep_stale  # noqa: E402 - the project's one atomic writer

FIELDS = ("path", "output", "status", "seconds", "error", "node", "pid", "actor_init_s", "actor_ready_at")


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def make_inputs(folder: Path, count: int, size: int = 32, corrupt: int = 0) -> list[Path]:
    """``count`` small noise PNGs ``img-000.png``...; the last ``corrupt`` of them are garbage bytes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img-{i:03d}.png"
        if i >= count - corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class Upscaler:
    """The stateful UDF: one model per actor; per file read, compute, atomic write, small record."""

    def __init__(
        self, output: str, delay: float = 0.0, slow_write: float = 0.0, journal: str = "", raise_errors: bool = False
    ) -> None:
        t0 = time.perf_counter()
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.torch = torch
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
        self.output = Path(output)
        self.delay, self.slow_write, self.journal, self.raise_errors = delay, slow_write, journal, raise_errors
        self.pid = os.getpid()
        # Only inside Ray: ray.get_runtime_context() in a process not connected to Ray *starts* a local
        # instance on the host (on its interface address, token in ~/.ray) - never in plain mode.
        ray = sys.modules.get("ray")
        self.node = ray.get_runtime_context().get_node_id()[:8] if ray and ray.is_initialized() else "local"
        self.init_s, self.ready_at = round(time.perf_counter() - t0, 3), time.time()  # model load, once per actor

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        records = [self.one(str(path)) for path in batch["path"]]
        return {key: [record[key] for record in records] for key in FIELDS}

    def one(self, path: str) -> dict[str, Any]:
        import numpy as np
        from PIL import Image

        t0 = time.perf_counter()
        target = self.output / Path(path).name
        status, error = "ok", ""
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
            x = self.torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
            with self.torch.inference_mode():
                y = self.model(x).clamp(0, 1)
            out = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            if self.delay:
                time.sleep(self.delay)  # stands in for a heavier model

            def write(handle: Any) -> None:
                import io

                buffer = io.BytesIO()
                Image.fromarray(out).save(buffer, format="PNG")
                data = buffer.getvalue()
                handle.write(data[: len(data) // 2])
                if self.slow_write:
                    handle.flush()
                    time.sleep(self.slow_write)  # a half-written temporary exists meanwhile
                handle.write(data[len(data) // 2 :])

            atomic_write(target, write)
        except Exception as exc:  # this file's own failure: a record, never an exception for Ray to retry
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            if self.raise_errors:  # only to show what Ray does with an exception escaping the UDF
                if self.journal:
                    with open(self.journal, "a") as log:
                        log.write(json.dumps({"path": path, "status": "raised", "pid": self.pid}) + "\n")
                raise
        record = {
            "path": path,
            "output": str(target) if status == "ok" else "",
            "status": status,
            "seconds": round(time.perf_counter() - t0, 4),
            "error": error,
            "node": self.node,
            "pid": self.pid,
            "actor_init_s": self.init_s,
            "actor_ready_at": self.ready_at,
        }
        if self.journal:  # every attempt, so re-executions after a node loss can be counted
            with open(self.journal, "a") as log:
                log.write(json.dumps(record) + "\n")
        return record


def connect(address: str, local_cpus: int) -> float:
    """``ray.init`` on ``address`` (``local``: start a private local instance); returns seconds."""
    import ray

    t0 = time.perf_counter()
    if address == "local":
        ray.init(
            num_cpus=local_cpus,
            include_dashboard=False,
            object_store_memory=200_000_000,
            configure_logging=False,
        )
    else:
        ray.init(address=address or None, configure_logging=False)  # None: RAY_ADDRESS, else a cluster
    return time.perf_counter() - t0


def wait_for_nodes(count: int, timeout: float = 60) -> int:
    import ray

    deadline = time.monotonic() + timeout
    while (alive := sum(1 for n in ray.nodes() if n["Alive"])) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def run(args: argparse.Namespace) -> int:
    import ray

    t_start, t0_epoch = time.perf_counter(), time.time()
    paths = sorted(str(p) for p in Path(args.input).glob("*.png"))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    init_s = connect(args.address, args.local_cpus)
    nodes = wait_for_nodes(args.expect_nodes)
    emit("ready", init_s=round(init_s, 2), nodes=nodes, files=len(paths), ray=ray.__version__, at=time.time())

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.actor_task_retry_on_errors = False  # a file's own error is a record, never a retry
    ctx.max_errored_blocks = 0  # an exception that escapes the UDF fails the run: a bug, not data

    # Actor fault tolerance. These are also Ray Data's defaults for actor pools (ActorPoolMapOperator.
    # _apply_default_remote_args); passing them as extra map_batches kwargs is deprecated in Ray 2.60
    # ("removed in 2.64") but is the only explicit way, so --fault-tolerance default omits them.
    remote_args = {}
    if args.fault_tolerance == "explicit":
        remote_args = {
            "max_restarts": -1,  # recreate an actor whose node (or process) died, as often as needed
            "max_task_retries": -1,  # and resubmit its tasks; app exceptions are not retried (see above)
        }
    elif args.fault_tolerance == "off":  # for comparison only: what the knobs buy
        remote_args = {"max_restarts": 0, "max_task_retries": 0}
    # One file per block by default: each file is its own task, its own unit of retry, and its record
    # streams back as soon as it is done. --rows-per-block N trades that for less per-task overhead.
    blocks = max(1, -(-len(paths) // args.rows_per_block))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(
        Upscaler,
        fn_constructor_kwargs={
            "output": str(output),
            "delay": args.delay,
            "slow_write": args.slow_write,
            "journal": args.journal,
            "raise_errors": args.raise_errors,
        },
        batch_size=args.batch_size,
        compute=ray.data.ActorPoolStrategy(size=args.concurrency),
        num_cpus=args.num_cpus,
        **remote_args,
    )
    seen: dict[str, int] = {}
    counts = {"ok": 0, "failed": 0}
    t_first = t_last = None
    in_actor_s = 0.0
    actors: dict[int, tuple[float, float]] = {}  # pid -> (model load seconds, ready at)
    try:
        for row in ds.iter_rows():
            t_last = time.perf_counter()
            t_first = t_first or t_last
            in_actor_s += row["seconds"]
            actors[row["pid"]] = (row["actor_init_s"], row["actor_ready_at"])
            seen[row["path"]] = seen.get(row["path"], 0) + 1
            counts[row["status"]] += 1
            emit("record", **{key: row[key] for key in FIELDS}, done=len(seen), total=len(paths), at=time.time())
    except KeyboardInterrupt:
        emit("interrupted", done=len(seen), total=len(paths))
        ray.shutdown()  # the job ends: the GCS kills its actors
        emit("swept", removed=sweep_stale(output))
        return 130
    except Exception as exc:  # the run itself failed (e.g. an actor lost with fault tolerance off)
        emit("error", error=f"{type(exc).__name__}: {str(exc)[-3000:]}", done=len(seen), total=len(paths))
        ray.shutdown()
        emit("swept", removed=sweep_stale(output))
        return 2
    swept = sweep_stale(output)
    elapsed = time.perf_counter() - t_start
    missing = sorted(set(paths) - set(seen))
    emit(
        "summary",
        files=len(paths),
        ok=counts["ok"],
        failed=counts["failed"],
        missing=missing,
        duplicates={p: n for p, n in seen.items() if n > 1},
        swept=swept,
        init_s=round(init_s, 2),
        first_record_s=round((t_first or time.perf_counter()) - t_start, 2),
        # first to last record: steady state, actors up; wall per file, and time in the UDF per file
        steady_s=round((t_last or 0) - (t_first or 0), 3),
        udf_ms_per_file=round(1000 * in_actor_s / max(1, len(seen)), 2),
        total_s=round(elapsed, 2),
        actors=len(actors),
        actor_model_load_s=max((a[0] for a in actors.values()), default=None),
        # from the driver's start to the first actor holding its model (worker start, imports, model)
        first_actor_ready_s=round(min((a[1] for a in actors.values()), default=t0_epoch) - t0_epoch, 2),
    )
    ray.shutdown()
    return 0 if not missing else 1


def plain(args: argparse.Namespace) -> int:
    """The same per-file work in one process, no Ray: the baseline for Ray Data's overhead."""
    t0 = time.perf_counter()
    upscaler = Upscaler(args.output, delay=args.delay)
    load_s = time.perf_counter() - t0
    paths = sorted(str(p) for p in Path(args.input).glob("*.png"))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    records = [upscaler.one(p) for p in paths]
    loop_s = time.perf_counter() - t1
    emit(
        "summary",
        files=len(paths),
        ok=sum(r["status"] == "ok" for r in records),
        failed=sum(r["status"] == "failed" for r in records),
        load_s=round(load_s, 3),
        loop_s=round(loop_s, 3),
        per_file_ms=round(1000 * loop_s / max(1, len(paths)), 2),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-inputs")
    make.add_argument("folder", type=Path)
    make.add_argument("--count", type=int, default=30)
    make.add_argument("--size", type=int, default=32)
    make.add_argument("--corrupt", type=int, default=0)
    for name in ("run", "plain"):
        p = sub.add_parser(name)
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
        p.add_argument("--delay", type=float, default=0.0, help="extra seconds per file (a heavier model)")
    r = sub.choices["run"]
    r.add_argument("--address", default="", help="host:port, or 'local' for ray.init() (default: RAY_ADDRESS)")
    r.add_argument("--local-cpus", type=int, default=2)
    r.add_argument("--expect-nodes", type=int, default=1)
    r.add_argument("--concurrency", type=int, default=2)
    r.add_argument("--num-cpus", type=float, default=0.5)
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--rows-per-block", type=int, default=1)
    r.add_argument("--slow-write", type=float, default=0.0, help="pause mid-write (seconds): temporaries exist")
    r.add_argument("--fault-tolerance", choices=("explicit", "default", "off"), default="explicit")
    r.add_argument("--raise-errors", action="store_true", help="let a file's exception escape the UDF (demo)")
    r.add_argument("--journal", default="", help="append every attempt's record to this file")
    args = parser.parse_args(argv)
    if args.command == "make-inputs":
        make_inputs(args.folder, args.count, args.size, args.corrupt)
        return 0
    return run(args) if args.command == "run" else plain(args)


if __name__ == "__main__":
    sys.exit(main())
