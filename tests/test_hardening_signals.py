"""Hardening (issue 13), signals and concurrent runs, with real processes: SIGTERM behaves like a
hard Ctrl-C in every long command (exit 143, temporaries removed, a summary), SIGKILL's leftovers
are swept by the next run into the folder (D5), bench writes atomically under SIGTERM (D6), and
overlapping --skip-existing runs share the work instead of failing (D9)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hat_cli.atomic import TEMP_SUFFIX, claim_name, signals_deferred
from hat_cli.batch import Job, RunOptions, run_batch
from hat_cli.checkpoint import load_model
from hat_cli.errors import EXIT_OK, EXIT_TERMINATED
from tests._batch_images import Bilinear, gradient, save_tiny_weights
from tests._hardening import child_env, hat, save_png, temp_files
from tests.store_server import sha256, write_registry

# The real entry point with the model slowed down (SLOW_MODEL seconds per image) and, on request,
# an encoder that stalls mid-file (STALL_WRITE: hat upscale; STALL_PNG: any PNG, e.g. bench
# --save-sr) after touching the marker file, so signals land at known points.
CHILD = """
import os, sys, time
import hat_cli.api as api
from hat_cli import imageio
from PIL import Image
from hat_cli.cli import main

def slowed(method):
    def slow(self, *args, **kwargs):
        time.sleep(float(os.environ.get("SLOW_MODEL", "0")))
        return method(self, *args, **kwargs)
    return slow
api.Upscaler.upscale_array = slowed(api.Upscaler.upscale_array)
api.Upscaler.upscale_tensor = slowed(api.Upscaler.upscale_tensor)

def stall(marker):
    def stalled(*args, **kwargs):
        handle = next(a for a in args if hasattr(a, "write"))
        handle.write(b"\\x89PNG first half of an image")
        handle.flush()
        open(marker, "w").close()
        time.sleep(60)
    return stalled
if os.environ.get("STALL_WRITE"):
    imageio._encode = stall(os.environ["STALL_WRITE"])
if os.environ.get("STALL_PNG"):
    Image.init()
    Image.SAVE["PNG"] = stall(os.environ["STALL_PNG"])
sys.argv = ["hat", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@contextmanager
def child(*args: str | Path, **env: str) -> Iterator[subprocess.Popen]:
    """The CLI in a child process, killed whatever happens to the test."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**env),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def inputs(folder: Path, count: int) -> Path:
    for index in range(count):
        Image.fromarray(gradient(8, 8 + index)).save(save_png(folder / f"{index:02d}.png"))
    return folder


def complete_pngs(folder: Path) -> list[Path]:
    """Every file in ``folder`` (none hidden), each a fully decodable PNG."""
    files = sorted(folder.iterdir())
    for path in files:
        assert not path.name.startswith("."), path
        with Image.open(path) as image:
            image.load()
    return files


# ------------------------------------------------------------------------------------------ D5
def test_d5_sigterm_mid_batch_stops_at_once_with_a_summary_then_a_rerun_completes(tmp_path: Path, weights) -> None:
    source, out = inputs(tmp_path / "in", 8), tmp_path / "out"
    args = ("upscale", source, "-o", out, "--weights", weights, "--json")
    with child(*args, SLOW_MODEL="0.4") as process:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        assert time.monotonic() - started < 10
    assert process.returncode == EXIT_TERMINATED, stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["interrupted"] and summary["exit_code"] == EXIT_TERMINATED
    assert "terminated" in stderr.splitlines()[-1] and "not finished" in stderr.splitlines()[-1]
    written = complete_pngs(out)
    assert 1 <= len(written) < 8 and summary["done"] == len(written) and temp_files(tmp_path) == []
    rerun = hat("upscale", source, "-o", out, "--weights", weights, "--skip-existing", "--json")
    assert rerun.exit_code == EXIT_OK, rerun.output
    assert len(complete_pngs(out)) == 8 and temp_files(tmp_path) == []


def test_d5_sigterm_while_a_file_is_written_removes_its_temporary(tmp_path: Path, weights) -> None:
    marker = tmp_path / "writing"
    source, out = inputs(tmp_path / "in", 3), tmp_path / "out"
    with child("upscale", source, "-o", out, "--weights", weights, STALL_WRITE=str(marker)) as process:
        wait_for(marker.exists)
        assert len(temp_files(out)) == 1
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_TERMINATED, stderr
    assert temp_files(tmp_path) == [] and list(out.iterdir()) == []


def test_d5_sigkill_leftovers_are_swept_by_the_next_run(tmp_path: Path, weights) -> None:
    marker = tmp_path / "writing"
    source, out = inputs(tmp_path / "in", 3), tmp_path / "out"
    with child("upscale", source, "-o", out, "--weights", weights, "--skip-existing", STALL_WRITE=str(marker)) as p:
        wait_for(marker.exists)
        p.send_signal(signal.SIGKILL)  # nothing can clean up: like a crash or a power cut
        p.wait(timeout=30)
    assert len(temp_files(out)) >= 1  # the killed writer's temporary (and its claim) are still there
    rerun = hat("upscale", source, "-o", out, "--weights", weights, "--skip-existing")
    assert rerun.exit_code == EXIT_OK, rerun.output
    assert len(complete_pngs(out)) == 3 and temp_files(tmp_path) == []


def test_d5_a_run_with_nothing_to_write_still_sweeps_but_never_a_live_temporary(tmp_path: Path) -> None:
    source, out = inputs(tmp_path / "in", 2), tmp_path / "out"
    assert hat("upscale", source, "-o", out, "--model", "bicubic", "-s", "2").exit_code == EXIT_OK
    stale = out / f".00_x2.png.0123abcd{TEMP_SUFFIX}"
    stale.write_bytes(b"half")
    live = out / f".01_x2.png.4567cdef{TEMP_SUFFIX}"
    live.write_bytes(b"being written")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a writer in another process would hold this lock
        result = hat("upscale", source, "-o", out, "--model", "bicubic", "-s", "2", "--skip-existing")
        assert result.exit_code == EXIT_OK, result.output
        assert not stale.exists() and live.exists()


def test_d6_bench_save_sr_under_sigterm_leaves_no_partial_png(tmp_path: Path) -> None:
    marker = tmp_path / "writing"
    hr, save_sr = tmp_path / "hr", tmp_path / "sr"
    for index in range(3):
        Image.fromarray(gradient(16, 16 + index)).save(save_png(hr / f"{index}.png"))
    args = ("bench", "--hr", hr, "-s", "2", "--model", "bicubic", "--save-sr", save_sr, "--csv", tmp_path / "s.csv")
    with child(*args, STALL_PNG=str(marker)) as process:
        wait_for(marker.exists)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_TERMINATED, stderr
    assert stderr.splitlines() == ["terminated"]
    left = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".png", ".csv", TEMP_SUFFIX))
    assert left == sorted(hr.iterdir())  # the inputs only: no PNG, CSV or temporary of the run


def test_signals_deferred_holds_a_signal_sent_from_another_thread_until_the_block_ends() -> None:
    """With other threads alive the kernel may hand SIGTERM to one of them; Python still runs the
    handler in the main thread, so masking the main thread alone would not hold it."""
    events: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: events.append("handled"))
    try:
        with signals_deferred():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
            sender.start()
            sender.join()
            time.sleep(0.1)  # without the deferral the handler runs here
            events.append("block done")
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert events == ["block done", "handled"]


def test_d5_sigterm_during_training_saves_the_checkpoint_and_exits_143(tmp_path: Path) -> None:
    for index in range(2):
        Image.fromarray(gradient(32, 32 + index)).save(save_png(tmp_path / "hr" / f"{index}.png"))
    out = tmp_path / "t.pth"
    arch = "embed_dim=8,depths=1,num_heads=2,window_size=4,compress_ratio=2,squeeze_factor=4"
    args = ("train", "--hr", tmp_path / "hr", "-s", "2", "--arch", arch, "--patch-size", "16", "-b", "1")
    with child(*args, "--iters", "1000000", "--save-every", "1", "--val-every", "0", "--out", out) as process:
        wait_for(out.exists)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_TERMINATED, stderr
    assert stderr.splitlines()[-2:] == [
        f"saved {out} and {tmp_path / 't.state.pth'}; continue with the same command plus --resume "
        f"{tmp_path / 't.state.pth'}",
        "terminated",
    ]
    load_model(out)  # complete and loadable
    assert temp_files(tmp_path) == []


def test_d5_sigterm_during_a_download_keeps_only_the_resumable_part(tmp_path: Path, server) -> None:
    data = os.urandom(3 << 20)
    url = server.serve("/slow.pth", data, throttle=0.05)
    model = {"family": "hat-tiny", "scale": 4, "file": "slow.pth", "sha256": sha256(data), "urls": [url]}
    registry = write_registry(tmp_path / "r.toml", {"slow": model})
    cache = tmp_path / "cache"
    with child("models", "download", "slow", "--registry", registry, HAT_CACHE_DIR=str(cache)) as process:
        wait_for(lambda: any(cache.rglob("*.part")))
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_TERMINATED and stderr.splitlines() == ["terminated"], stderr
    [part] = [p for p in cache.rglob("*") if p.is_file()]  # the lock file is gone, no temporaries
    assert part.name.endswith(".pth.part") and 0 < part.stat().st_size < len(data)


# ------------------------------------------------------------------------------------------ D9
def test_d9_overlapping_skip_existing_runs_share_the_work(tmp_path: Path, weights) -> None:
    source, out = inputs(tmp_path / "in", 4), tmp_path / "out"
    args = ("upscale", source, "-o", out, "--weights", weights, "--skip-existing", "--json")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(SLOW_MODEL="0.3"),
        )
        for _ in range(2)
    ]
    try:
        results = [p.communicate(timeout=120) for p in processes]
    finally:
        for process in processes:
            process.kill()
    assert [p.returncode for p in processes] == [EXIT_OK] * 2, [stderr for _, stderr in results]
    summaries = [json.loads(stdout.splitlines()[-1]) for stdout, _ in results]
    assert sum(s["done"] for s in summaries) == 4  # every file computed exactly once
    assert all(s["failed"] == 0 and s["done"] + s["skipped"] == 4 for s in summaries)
    assert len(complete_pngs(out)) == 4 and temp_files(tmp_path) == []


class AppearsMeanwhile(Bilinear):
    """Another process writes the output while this one is upscaling it."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = target

    def upscale_tensor(self, x: torch.Tensor, progress=None) -> torch.Tensor:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(self.target)
        return super().upscale_tensor(x, progress)


def test_d9_an_output_that_appears_during_the_run_is_skipped_not_failed(tmp_path: Path) -> None:
    source = save_png(tmp_path / "a.png", 4, 4)
    grey = tmp_path / "g.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(grey)  # grey: the tensor path
    target = tmp_path / "g_x2.png"
    results = []
    run_batch(AppearsMeanwhile(target), [Job(grey, target)], results.append, RunOptions(skip_existing=True))
    assert [(r.status, r.error) for r in results] == [("skipped", "output exists")]
    assert Image.open(target).size == (4, 4)  # the other writer's file is left alone
    results.clear()
    refused = tmp_path / "a_x2.png"
    run_batch(AppearsMeanwhile(refused), [Job(source, refused)], results.append, RunOptions())
    assert results[0].status == "failed" and "exists" in results[0].error  # without --skip-existing
    assert not claim_name(target).exists() and temp_files(tmp_path) == []
