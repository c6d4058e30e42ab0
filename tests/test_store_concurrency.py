"""Several processes downloading the same checkpoint, and a process killed mid-download."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hat_cli.registry import load_registry
from hat_cli.store import RetryPolicy, cached_path, download_checkpoint, partial_path
from tests.store_server import cache_files, sha256, write_registry

ROOT = Path(__file__).resolve().parents[1]
DATA = os.urandom(400_000)
fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def registry_for(tmp_path: Path, url: str) -> Path:
    table = {"family": "hat-s", "scale": 2, "file": "rand_x2.pth", "sha256": sha256(DATA), "size": len(DATA)}
    return write_registry(tmp_path / "reg.toml", {"rand-x2": {**table, "urls": [url]}})


def _hat_when_told(go, args: list[str], out: str) -> None:
    """Child: wait for the start signal, then run the real ``hat`` entry point (error boundary included)."""
    from hat_cli.cli import main

    sys.stdout = open(out, "w")  # noqa: SIM115  (flushed and closed by the process exit)
    sys.stderr = open(out + ".err", "w")  # noqa: SIM115
    sys.argv = ["hat", *args]
    go.wait()
    main()


@fork
def test_four_hat_processes_download_one_file(cache, server, tmp_path):
    # ~0.5 s to serve, and the four start at the same instant: three must wait for the first.
    registry = registry_for(tmp_path, server.serve("/a.pth", DATA, throttle=0.02))
    context = multiprocessing.get_context("fork")
    go = context.Event()
    args = ["models", "download", "rand-x2", "--registry", str(registry)]
    outs = [str(tmp_path / f"out{i}") for i in range(4)]
    procs = [context.Process(target=_hat_when_told, args=(go, args, out)) for out in outs]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert [Path(out + ".err").read_text() for out in outs] == [""] * 4  # no error, no bar off a terminal
    path = cached_path(load_registry(registry).presets["rand-x2"])
    lines = sorted(Path(out).read_text() for out in outs)
    assert lines == [f"cached rand-x2: {path}\n"] * 3 + [f"downloaded rand-x2: {path}\n"]
    assert server.hits("/a.pth") == [None]
    assert path.read_bytes() == DATA
    assert cache_files(cache) == [f"checkpoints/{path.name}"]


def test_python_m_hat_cli_downloads_and_fails_offline_in_one_line(cache, server, tmp_path):
    """The installed entry point: a download, and next to it an offline run with an empty cache."""
    registry = registry_for(tmp_path, server.serve("/a.pth", DATA))
    command = [sys.executable, "-m", "hat_cli", "models", "download", "rand-x2", "--registry", str(registry)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    online = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    offline_env = {**env, "HAT_OFFLINE": "1", "HAT_CACHE_DIR": str(tmp_path / "empty")}
    offline = subprocess.run(command, env=offline_env, cwd=tmp_path, capture_output=True, timeout=120)
    out, err = online.communicate(timeout=120)
    path = cached_path(load_registry(registry).presets["rand-x2"])
    assert (online.returncode, out.decode(), err) == (0, f"downloaded rand-x2: {path}\n", b"")
    assert path.read_bytes() == DATA
    assert offline.returncode == 2 and offline.stdout == b""
    [line] = offline.stderr.decode().splitlines()
    assert line.startswith("error: offline (HAT_OFFLINE=1 or --offline): model rand-x2 is not cached")
    assert f"sha256 {sha256(DATA)}" in line and "hat models import FILE --name rand-x2" in line
    assert server.hits("/a.pth") == [None]  # only the online process asked


def _download(registry: str) -> None:
    download_checkpoint(load_registry(registry).presets["rand-x2"], policy=RetryPolicy(retries=0, backoff=0.0))


@fork
def test_killed_process_leaves_a_partial_that_the_next_run_resumes(cache, server, tmp_path):
    registry = registry_for(tmp_path, server.serve("/a.pth", DATA, throttle=0.05))
    preset = load_registry(registry).presets["rand-x2"]
    child = multiprocessing.get_context("fork").Process(target=_download, args=(str(registry),))
    child.start()
    part = partial_path(preset)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 50_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)  # no cleanup handler runs: like a crash or a power cut
    child.join()
    kept = part.stat().st_size
    assert 50_000 < kept < len(DATA)
    # The dead process's lock died with it; this run resumes the partial.
    assert download_checkpoint(preset, policy=RetryPolicy(retries=0, backoff=0.0)).path.read_bytes() == DATA
    assert server.hits("/a.pth") == [None, f"bytes={kept}-"]
