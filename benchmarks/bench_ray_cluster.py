"""Timings of the loopback Ray cluster and the Ray Data POC (see benchmarks/NOTES-ray.md).

    python benchmarks/bench_ray_cluster.py overhead [--files 200]   # plain loop vs Ray Data, cluster and local
    python benchmarks/bench_ray_cluster.py kill [--fault-tolerance explicit|default|off] [--slow-detection]

Everything Ray runs inside private network and PID namespaces (tests/ray_cluster.py); needs root.
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ray_poc import make_inputs  # noqa: E402

from tests.ray_cluster import LoopbackCluster  # noqa: E402

POC = REPO / "benchmarks" / "ray_poc.py"


def events(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines if line.startswith('{"event"')]


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def overhead(args: argparse.Namespace, work: Path) -> None:
    make_inputs(work / "in", args.files)
    done = subprocess.run(
        [sys.executable, str(POC), "plain", "--input", str(work / "in"), "--output", str(work / "plain")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    plain = events(done.stdout.splitlines())[-1]
    print(json.dumps({"mode": "plain", "load": load(), **plain}), flush=True)
    for nodes, rows in ((2, 1), (2, 8), (0, 1)):
        t0 = time.monotonic()
        with LoopbackCluster(work / f"c{nodes}", nodes=nodes) as cluster:
            extra = ["--expect-nodes", "2"] if nodes else ["--address", "local"]
            argv = [
                sys.executable,
                str(POC),
                "run",
                "--input",
                str(work / "in"),
                "--output",
                str(work / f"out{nodes}-{rows}"),
            ]
            driver = cluster.spawn("poc", [*argv, *extra, "--rows-per-block", str(rows)])
            code = cluster.wait("poc", timeout=900)
        result = events(driver.lines())[-1]
        per_file = 1000 * result["steady_s"] / max(1, result["files"] - 1)
        print(json.dumps({
            "mode": "cluster-2-nodes" if nodes else "local-ray.init", "rows_per_block": rows, "rc": code, "load": load(),
            "cluster_start_s": cluster.timings.get("start_s"), "init_s": result["init_s"],
            "first_actor_ready_s": result["first_actor_ready_s"], "actor_model_load_s": result["actor_model_load_s"],
            "first_record_s": result["first_record_s"], "total_s": result["total_s"],
            "steady_wall_ms_per_file": round(per_file, 2), "udf_ms_per_file": result["udf_ms_per_file"],
            "wall_s_including_cluster": round(time.monotonic() - t0, 2), "survivors": cluster.survivors(),
        }), flush=True)  # fmt: skip


def kill(args: argparse.Namespace, work: Path) -> None:
    make_inputs(work / "in", args.files, corrupt=1)
    config = {"system_config": {}} if args.slow_detection else {}
    with LoopbackCluster(work / "c", nodes=2, **config) as cluster:
        argv = [sys.executable, str(POC), "run", "--input", str(work / "in"), "--output", str(work / "out"),
                "--expect-nodes", "2", "--delay", str(args.delay), "--slow-write", "0.2",
                "--fault-tolerance", args.fault_tolerance, "--journal", str(work / "journal.jsonl")]  # fmt: skip
        driver = cluster.spawn("poc", argv)
        while len([e for e in events(driver.lines()) if e["event"] == "record"]) < args.kill_after:
            time.sleep(0.02)
        before = {e["pid"] for e in events(driver.lines()) if e["event"] == "record"}
        t_kill = time.time()
        killed = cluster.kill_node(2)
        code = cluster.wait("poc", timeout=600)
        t_end = time.time()
    evs = events(driver.lines())
    recs = [e for e in evs if e["event"] == "record"]
    after = [r for r in recs if r["at"] > t_kill]
    new_pids = [r for r in after if r["pid"] not in before]
    gaps = [b["at"] - a["at"] for a, b in pairwise(after)]
    attempts: dict[str, int] = {}
    for line in (work / "journal.jsonl").read_text().splitlines():
        path = json.loads(line)["path"]
        attempts[path] = attempts.get(path, 0) + 1
    print(json.dumps({
        "fault_tolerance": args.fault_tolerance, "health_check": "default" if args.slow_detection else "1s x 3",
        "rc": code, "load": load(), "killed": [k["cmd"][:40] for k in killed],
        "events": [e for e in evs if e["event"] not in ("record", "ready")],
        "records_after_kill": len(after),
        "first_record_after_kill_s": round(after[0]["at"] - t_kill, 2) if after else None,
        "first_record_of_new_actor_s": round(new_pids[0]["at"] - t_kill, 2) if new_pids else None,
        "longest_gap_after_kill_s": round(max(gaps), 2) if gaps else None,
        "kill_to_driver_exit_s": round(t_end - t_kill, 2),
        "files_attempted_twice": sorted(Path(p).name for p, n in attempts.items() if n > 1),
        "temporaries_left": sorted(p.name for p in (work / "out").iterdir() if p.name.endswith(".hat-part")),
        "survivors": cluster.survivors(),
    }), flush=True)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=("overhead", "kill"))
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--kill-after", type=int, default=8)
    parser.add_argument("--fault-tolerance", choices=("explicit", "default", "off"), default="explicit")
    parser.add_argument("--slow-detection", action="store_true", help="Ray's default health checks, not 1 s x 3")
    args = parser.parse_args()
    args.files = args.files or (200 if args.scenario == "overhead" else 30)
    with tempfile.TemporaryDirectory(prefix="hat-ray-bench-") as tmp:
        (overhead if args.scenario == "overhead" else kill)(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
