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
from store_server import LocalServer, cache_files, sha256, write_registry

from hat_cli.registry import load_registry
from hat_cli.store import RetryPolicy, cached_path, download_checkpoint, partial_path

ROOT = Path(__file__).resolve().parents[1]
DATA = os.urandom(400_000)
fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HAT_CACHE_DIR", str(folder))
    monkeypatch.delenv("HAT_OFFLINE", raising=False)
    monkeypatch.delenv("HAT_REGISTRY", raising=False)
    return folder


@pytest.fixture
def server():
    with LocalServer() as srv:
        yield srv


def registry_for(tmp_path: Path, url: str) -> Path:
    table = {"family": "hat-s", "scale": 2, "file": "rand_x2.pth", "sha256": sha256(DATA), "size": len(DATA)}
    return write_registry(tmp_path / "reg.toml", {"rand-x2": {**table, "urls": [url]}})


def test_four_cli_processes_download_one_file(cache, server, tmp_path):
    # ~1.2 s to serve, so processes that start together find the download in progress.
    registry = registry_for(tmp_path, server.serve("/a.pth", DATA, throttle=0.05))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HAT_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "hat_cli", "models", "download", "rand-x2", "--registry", str(registry)]
    procs = [
        subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert err == b""  # not a terminal: no progress bar, no warning
    statuses = sorted(out.decode().split()[0] for out, _ in outputs)
    assert statuses == ["cached", "cached", "cached", "downloaded"]
    assert server.hits("/a.pth") == [None]
    path = cached_path(load_registry(registry).presets["rand-x2"])
    assert path.read_bytes() == DATA
    assert cache_files(cache) == [f"checkpoints/{path.name}"]


def _download_when_told(go, registry: str) -> None:
    go.wait()
    download_checkpoint(load_registry(registry).presets["rand-x2"], policy=RetryPolicy(retries=0, backoff=0.0))


@fork
def test_four_processes_started_at_the_same_instant(cache, server, tmp_path):
    registry = registry_for(tmp_path, server.serve("/a.pth", DATA, throttle=0.02))
    context = multiprocessing.get_context("fork")
    go = context.Event()
    procs = [context.Process(target=_download_when_told, args=(go, str(registry))) for _ in range(4)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert server.hits("/a.pth") == [None]
    assert cached_path(load_registry(registry).presets["rand-x2"]).read_bytes() == DATA


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
