"""A tiled ``hat upscale`` on an idle CPU and beside one busy process, before and after the fix.

Runs ``hat upscale IMAGE --model hat-tiny --scale 4 --tile 48`` on a 480x320 picture (the bundled
sample enlarged with bicubic and cropped) in a fresh process, and times the file (the per-file
``seconds`` of ``--json``: read, tiled upscale, write), with and without a competing process
(``python -c 'while True: pass'``, unpinned unless ``--pin``). Configurations:

* ``before``: the old defaults: torch's own thread count (one per core) and OpenMP's default
  waiting (spin, then sleep), i.e. the CLI entered without :func:`hat_cli.threads.prepare_openmp`;
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` only, torch's thread count kept;
* ``after``: the CLI as shipped: passive waiting, one thread per core this process may use
  (affinity, cgroup quota): the same as ``passive`` wherever torch's count is right.

Each case runs ``--repeats`` times, idle and busy alternating, and reports the minimum (other jobs
share the machine: the minimum is the run they disturbed least) and the median, the threads the
run chose, and the busy / idle ratio of the minima. ``--nice -10`` (root) runs the benchmark and its
competing process ahead of everything else on the machine, the closest a shared machine gets to
an idle one.

    python benchmarks/bench_busy_cpu.py --repeats 3
    sudo python benchmarks/bench_busy_cpu.py --repeats 3 --nice -10
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

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OLD_ENTRY = "import sys; from hat_cli.cli import app; sys.argv[0] = 'hat'; app()"  # no prepare_openmp


def make_image(folder: Path) -> Path:
    from hat_cli.imresize import imresize, to_uint8
    from hat_cli.samples import sample_path

    small = np.asarray(Image.open(sample_path()).convert("RGB"))
    big = to_uint8(imresize(small, output_shape=(480, 480)))[80:400]  # 320 rows x 480 columns
    path = folder / "busy.png"
    Image.fromarray(big).save(path)
    return path


def run_once(config: str, image: Path, out: Path, torch_threads: int, timeout: float) -> tuple[float, str]:
    args = ["upscale", str(image), "--model", "hat-tiny", "--scale", "4", "--tile", "48"]
    args += ["-o", str(out), "--overwrite", "--json", "-v"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HAT_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if config == "before":
        command = [sys.executable, "-c", OLD_ENTRY, *args, "--threads", str(torch_threads)]
    elif config == "passive":
        command = [sys.executable, "-m", "hat_cli", *args, "--threads", str(torch_threads)]
    else:
        command = [sys.executable, "-m", "hat_cli", *args]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return float("inf"), "?"
    if done.returncode != 0:
        raise SystemExit(f"{config}: exit {done.returncode}\n{done.stderr}")
    record = json.loads(done.stdout.splitlines()[0])
    threads = next(
        (line.split(":")[1].split("(")[0].strip() for line in done.stderr.splitlines() if "CPU threads" in line), "?"
    )
    return float(record["seconds"]), threads


def hog(pin: bool) -> subprocess.Popen:
    code = "while True: pass"
    if pin:
        code = "import os; os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\n" + code
    process = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(1.0)  # let the scheduler see it
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="before,passive,after")
    parser.add_argument("--pin", action="store_true", help="pin the busy process to the last core")
    parser.add_argument("--timeout", type=float, default=400.0, help="give up on one run after this many seconds")
    parser.add_argument("--nice", type=int, default=0, help="add this to the priority of the runs and the busy process")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by every process started below
    import torch

    torch_threads = torch.get_num_threads()  # what torch starts with: one thread per core
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        image = make_image(Path(folder))
        out = Path(folder) / "out.png"
        for config in args.configs.split(","):
            times: dict[str, list[float]] = {"idle": [], "busy": []}
            chosen: dict[str, set[str]] = {"idle": set(), "busy": set()}
            for _ in range(args.repeats):  # idle and busy alternate, so slow drifts hit both
                for load in ("idle", "busy"):
                    competitor = hog(args.pin) if load == "busy" else None
                    try:
                        seconds, threads = run_once(config, image, out, torch_threads, args.timeout)
                    finally:
                        if competitor is not None:
                            competitor.kill()
                            competitor.wait()
                    times[load].append(seconds)
                    chosen[load].add(threads)
                    print(f"{config:8s} {load}: {seconds:.1f} s ({threads} threads)", file=sys.stderr, flush=True)
            idle, busy = min(times["idle"]), min(times["busy"])
            rows.append(
                (config, idle, statistics.median(times["idle"]), busy, statistics.median(times["busy"]), chosen)
            )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n{cpus} cores, hat-tiny x4, 480x320, --tile 48, {args.repeats} runs each (min / median), busy process {'pinned' if args.pin else 'unpinned'}, nice {args.nice:+d}\n"
    )
    print("| configuration | threads idle / busy | idle s | busy s | busy / idle |")
    print("|---|---|---|---|---|")
    for config, idle, idle_med, busy, busy_med, chosen in rows:
        threads = f"{'/'.join(sorted(chosen['idle']))} / {'/'.join(sorted(chosen['busy']))}"
        print(
            f"| {config} | {threads} | {idle:.1f} ({idle_med:.1f}) | {busy:.1f} ({busy_med:.1f}) | **{busy / idle:.2f}×** |"
        )


if __name__ == "__main__":
    main()
