"""Images per second: ``hat upscale`` with the local engine vs ``--engine ray`` with 1 and 2 workers.

    python benchmarks/bench_ray.py [--files 48] [--size 64] [--model hat-tiny --scale 4]

The same folder of noise images is upscaled by the bundled ``hat-tiny`` x4 model on the CPU, each
way writing its own output folder (the outputs are checked to be byte-identical):

* the local engine (one process; torch uses every core), and the same with ``OMP_NUM_THREADS=1``
  (what one Ray worker of 1 CPU gets);
* ``--engine ray --workers N --cpus-per-worker 1`` with N = 1 and 2 on a real 2-node Ray cluster on
  loopback (tests/ray_cluster.py: 1 CPU per node, private network and PID namespaces; needs root),
  and with 2 workers on a Ray instance the driver starts itself (no address).

Each run goes through ``stamp``, which runs the CLI with ``--json`` and stamps every record with
the time it reached the driver's stdout. Per run: wall time of the whole command (interpreter, model
load, Ray start included), time to the first result, steady-state images/s (first to last result),
the seconds each file spent in the worker (read, upscale, write), and the overhead per file: wall
time per file per worker in the steady state minus that in-worker time. Prints one JSON object per
run, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ray_cluster import LoopbackCluster  # noqa: E402


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def stamp(command: list[str]) -> int:
    """Run ``command``; print ``{"t": seconds since start, "record": ...}`` per JSON stdout line, then
    ``{"t": ..., "exit": code}``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            print(json.dumps({"t": round(time.monotonic() - t0, 4), "record": json.loads(line)}), flush=True)
    code = proc.wait()
    print(json.dumps({"t": round(time.monotonic() - t0, 4), "exit": code}), flush=True)
    return code


def make_inputs(folder: Path, files: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img-{i:03d}.png")


def summarize(name: str, workers: int, lines: list[str], ray: bool = True) -> dict:
    stamped = [json.loads(line) for line in lines if line.startswith('{"t"')]
    records = [s for s in stamped if "record" in s and s["record"]["type"] == "file"]
    end = next(s for s in stamped if "exit" in s)
    times = [r["t"] for r in records]
    in_worker = [r["record"]["seconds"] for r in records]
    steady_s = times[-1] - times[0]
    per_file = steady_s / max(1, len(times) - 1)  # wall seconds per file, all workers together
    return {
        "run": name,
        "workers": workers,
        "exit": end["exit"],
        "files": len(records),
        "done": sum(r["record"]["status"] == "done" for r in records),
        "wall_s": end["t"],
        "first_result_s": times[0],
        "images_per_s": round(1 / per_file, 2) if per_file else None,
        "in_worker_ms": round(1000 * statistics.mean(in_worker), 1),
        # Ray only: the local engine's per-file seconds overlap (its reader and writer threads run
        # beside the model), so wall minus in-worker time means nothing there.
        "overhead_ms_per_file": round(1000 * (per_file * workers - statistics.mean(in_worker)), 1) if ray else None,
        "load": load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="hat-tiny")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-local-instance", action="store_true", help="no run with a Ray instance of its own")
    if sys.argv[1:2] == ["stamp"]:
        return stamp(sys.argv[sys.argv.index("--") + 1 :])
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hat-bench-ray-"))
    make_inputs(work / "in", args.files, args.size)
    model = ["--model", args.model, "--scale", str(args.scale), "--device", "cpu", "--precision", "fp32"]

    def cli(out: str, *extra: str) -> list[str]:
        hat = [sys.executable, "-m", "hat_cli", "upscale", str(work / "in"), "-o", str(work / out), *model, "--json"]
        return [sys.executable, __file__, "stamp", "--", *hat, *extra]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results = []
    for name, out, threads in (("local engine", "local", None), ("local engine, OMP_NUM_THREADS=1", "local1", "1")):
        run_env = env if threads is None else {**env, "OMP_NUM_THREADS": threads}
        done = subprocess.run(cli(out), capture_output=True, text=True, env=run_env, check=True)
        results.append(summarize(name, 1, done.stdout.splitlines(), ray=False))
        print(json.dumps(results[-1]), flush=True)

    with LoopbackCluster(work / "cluster", nodes=2) as cluster:
        for workers in (1, 2):
            engine = ("--engine", "ray", "--workers", str(workers), "--cpus-per-worker", "1")
            driver = cluster.spawn(f"ray{workers}", cli(f"ray{workers}", *engine, "--ray-address", cluster.address))
            cluster.wait(f"ray{workers}", timeout=1800)
            results.append(summarize(f"ray, 2-node cluster, {workers} worker(s)", workers, driver.lines()))
            print(json.dumps(results[-1]), flush=True)
    assert cluster.survivors() == []
    if not args.skip_local_instance:
        with LoopbackCluster(work / "local-instance", nodes=0) as cluster:
            engine = ("--engine", "ray", "--workers", "2", "--cpus-per-worker", "1")
            driver = cluster.spawn("ray-local", cli("ray-local", *engine))
            cluster.wait("ray-local", timeout=1800)
            results.append(summarize("ray, own local instance, 2 workers", 2, driver.lines()))
            print(json.dumps(results[-1]), flush=True)
        assert cluster.survivors() == []

    reference = sorted((work / "local").iterdir())
    for out in ("local1", "ray1", "ray2", *(() if args.skip_local_instance else ("ray-local",))):
        for path in reference:
            assert (work / out / path.name).read_bytes() == path.read_bytes(), (out, path.name)

    print(f"\n{args.files} images of {args.size}x{args.size}, {args.model} x{args.scale}, CPU fp32")
    print("| run | workers | wall s | first result s | images/s | in worker ms/file | overhead ms/file | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['run']} | {r['workers']} | {r['wall_s']:.1f} | {r['first_result_s']:.1f} | {r['images_per_s']} "
            f"| {r['in_worker_ms']} | {r['overhead_ms_per_file'] if r['overhead_ms_per_file'] is not None else '-'} "
            f"| {r['load']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
