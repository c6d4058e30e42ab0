"""How many CPU threads the network's operators use, and how they wait for each other.

PyTorch's OpenMP threads spin while they wait for each other. When another process holds one of
the cores, every parallel region waits for the thread that lost its core while the spinning
threads burn the time it needs: a tiled ``hat-tiny`` run on a 2-core machine went from 7.7 s to
24 s beside one busy process (113 s when other jobs loaded the machine too). Two things keep that
graceful (12 s beside the busy process, 1.17x the idle time; ``benchmarks/bench_busy_cpu.py``,
table in the README):

* :func:`prepare_openmp` asks OpenMP to sleep instead of spinning while it waits
  (``OMP_WAIT_POLICY=PASSIVE``, unless the user set it); it must run before torch is imported;
* :func:`default_threads` counts the cores this process may actually use (its CPU affinity, and a
  cgroup CPU quota as in containers, where ``os.cpu_count()`` overstates them), and
  :func:`set_threads` gives torch that many threads (``--threads N`` overrides it).

Leaving out the cores another process keeps busy was measured too, and rejected: with passive
waiting, two threads beside a busy process finished sooner than one (18-24 s against 22-40 s on
the shared 2-core machine).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from .errors import ConfigError

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
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


def default_threads() -> int:
    """The intra-op thread count ``hat`` uses unless told: one per available core."""
    return available_cpus()


def max_threads() -> int:
    """The most ``--threads`` accepts: 4 per core of the machine (OpenMP fails, or crashes, on
    tens of thousands)."""
    return 4 * (os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (None: :func:`default_threads`); returns the number."""
    import torch

    count = default_threads() if threads is None else int(threads)
    most = max_threads()
    if not 1 <= count <= most:
        raise ConfigError(f"--threads {count}: must be from 1 to {most} (4 per core of this machine)")
    torch.set_num_threads(count)
    return count


__all__ = ["available_cpus", "default_threads", "max_threads", "prepare_openmp", "set_threads"]
