"""How many CPU threads the network's operators use, chosen from the cores actually free.

PyTorch starts one intra-op thread per physical core and its OpenMP threads spin while they wait
for each other. When another process holds one of those cores, every parallel region waits for the
thread that lost its core, and the spinning threads steal time from it: a tiled ``hat-tiny`` run
on a 2-core machine went from 6.6 s to 113 s with one busy process beside it
(``benchmarks/bench_busy_cpu.py``). Two things keep that graceful:

* :func:`prepare_openmp` asks OpenMP to sleep instead of spin while it waits
  (``OMP_WAIT_POLICY=PASSIVE``, unless the user set it); it must run before torch is imported;
* :func:`default_threads` counts the cores this process may use (CPU affinity, and a cgroup CPU
  quota as in containers), minus the cores other processes kept busy over a short sample
  (``/proc/stat``), and :func:`set_threads` gives torch that many threads (``--threads N``
  overrides it).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SAMPLE_SECONDS = 0.15  # how long default_threads watches the other processes
_CGROUP = Path("/sys/fs/cgroup")


def prepare_openmp() -> bool:
    """Let OpenMP threads sleep while waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose
    a policy. Returns False when torch was already imported (too late: the runtime read it)."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
    return "torch" not in sys.modules


def _cgroup_quota(root: Path = _CGROUP) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return None


def available_cpus(cgroup_root: Path = _CGROUP) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (rounded up)."""
    cpus = _affinity()
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) jiffies over ``cpus`` (all when None) from /proc/stat, or None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total else None


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def busy_cpus(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores kept busy by *other* processes (on this process's CPUs) over ``seconds``; 0 if unknown."""
    cpus = _affinity()
    before, own_before = _cpu_times(cpus), _own_cpu_seconds()
    if before is None:
        return 0.0
    time.sleep(seconds)
    after, own_after = _cpu_times(cpus), _own_cpu_seconds()
    if after is None or after[1] <= before[1]:
        return 0.0
    count = len(cpus) if cpus else (os.cpu_count() or 1)
    share = (after[0] - before[0]) / (after[1] - before[1])  # 0..1 of all those cores
    own = (own_after - own_before) / seconds
    return max(0.0, share * count - own)


def default_threads(sample: float = SAMPLE_SECONDS) -> int:
    """Available cores minus those other processes keep busy (rounded), at least 1."""
    available = available_cpus()
    if available == 1 or sample <= 0:
        return available
    return max(1, min(available, available - round(busy_cpus(sample))))


def set_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (None: :func:`default_threads`); returns the number."""
    import torch

    count = default_threads() if threads is None else int(threads)
    if count < 1:
        raise ConfigError(f"--threads {count}: must be at least 1")
    torch.set_num_threads(count)
    return count


__all__ = ["available_cpus", "busy_cpus", "default_threads", "prepare_openmp", "set_threads"]
