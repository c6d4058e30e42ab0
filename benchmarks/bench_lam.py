"""LAM speed: path steps per second one at a time (the official loop) vs batched (``hat lam``).

Runs :func:`hat_cli.lam.attribute` on a crop of a Set5 x4 LR image with the bundled ``hat-tiny``
x4 model, once per batch size, alternating rounds so load from other processes hits every mode
alike, and prints per batch size the median wall-clock steps/s, the process CPU seconds per step
(less disturbed by a busy machine) and the largest attribution difference from one-at-a-time.

``--memory`` instead checks the memory model of the automatic batch (:func:`hat_cli.lam.step_bytes`):
for each input size, in a fresh subprocess, the rise of peak RSS over one forward + backward
against the estimate (the saved activations measured by :class:`hat_cli.lam.SavedTensors`, plus
the network's forward working set).

Examples::

    python benchmarks/bench_lam.py                               # 32 px crop, 50 steps, batch 1 / auto
    python benchmarks/bench_lam.py --crop 48 --batches 1,8,25,auto --rounds 3
    python benchmarks/bench_lam.py --memory --sizes 64,96,128
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hat_cli.api import open_upscaler  # noqa: E402
from hat_cli.lam import SavedTensors, Window, attribute, step_bytes, window_gradient  # noqa: E402
from hat_cli.model.padding import run_padded  # noqa: E402

SET5 = REPO.parent / "shared" / "datasets" / "Set5" / "LR_bicubic" / "X4"


def load_net(model: str):
    upscaler = open_upscaler(model=model, scale=4, device="cpu", precision="fp32", offline=True)
    return upscaler.model


def crop(image: str, size: int) -> np.ndarray:
    """The centre ``size x size`` of a Set5 x4 LR image, H x W x 3 uint8."""
    array = np.asarray(Image.open(SET5 / f"{image}_LRBI_x4.png").convert("RGB"))
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


def speed(args: argparse.Namespace) -> None:
    net = load_net(args.model)
    lr = crop(args.image, args.crop)
    sr_side = args.crop * net.scale
    window = Window((sr_side - args.window) // 2, (sr_side - args.window) // 2, args.window)
    modes = [None if b == "auto" else int(b) for b in args.batches.split(",")]
    attribute(net, lr, window, steps=2, batch=2)  # warm-up
    walls: dict[int | None, list[float]] = {mode: [] for mode in modes}
    cpus: dict[int | None, list[float]] = {mode: [] for mode in modes}
    results = {}
    for _ in range(args.rounds):
        for mode in modes:
            cpu = time.process_time()
            result = attribute(net, lr, window, steps=args.steps, batch=mode)
            cpus[mode].append((time.process_time() - cpu) / args.steps)
            walls[mode].append(result.steps_per_second)
            results[mode] = result
    reference = results[modes[0]].attribution
    print(
        f"LAM on {args.image} LR crop {args.crop}x{args.crop} (x4 -> {sr_side}), {args.model}, {args.steps} steps, "
        f"window {args.window}, CPU fp32, {torch.get_num_threads()} threads, median of {args.rounds}"
    )
    print(f"{'batch':>12} | {'steps/s':>8} | {'CPU s/step':>10} | {'speed-up':>8} | {'max diff':>9}")
    base = statistics.median(walls[modes[0]])
    for mode in modes:
        rate = statistics.median(walls[mode])
        label = f"auto ({results[mode].batch})" if mode is None else str(mode)
        diff = np.abs(results[mode].attribution - reference).max() / np.abs(reference).max()
        print(f"{label:>12} | {rate:8.2f} | {statistics.median(cpus[mode]):10.3f} | {rate / base:7.2f}x | {diff:9.1e}")


def memory_probe(model: str, side: int) -> tuple[float, float]:
    """(measured peak RSS rise, estimate) in bytes for one forward + backward of a side x side input."""
    net = load_net(model)
    warm = torch.rand(1, 3, 16, 16, requires_grad=True)
    torch.autograd.grad(window_gradient(run_padded(net, warm), Window(0, 0, 8)), warm)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x = torch.rand(1, 3, side, side, requires_grad=True)
    with SavedTensors(net) as saved:
        out = run_padded(net, x)
    torch.autograd.grad(window_gradient(out, Window(0, 0, 8)), x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak - before, step_bytes(net, side, side, saved.nbytes, torch.float32)


def memory(args: argparse.Namespace) -> None:
    print(f"{args.model}: peak RSS of one forward + backward vs step_bytes (per input pixel)")
    print(f"{'side':>6} | {'measured':>10} | {'estimate':>10} | {'ratio':>6}")
    for side in (int(s) for s in args.sizes.split(",")):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.bench_lam import memory_probe; "
            "print(*memory_probe(sys.argv[2], int(sys.argv[3])))"
        )
        run = subprocess.run(
            [sys.executable, "-c", code, str(REPO), args.model, str(side)], capture_output=True, text=True, check=True
        )
        measured, estimate = (float(v) for v in run.stdout.split())
        pixels = side * side
        print(f"{side:>6} | {measured / pixels:10.0f} | {estimate / pixels:10.0f} | {estimate / measured:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hat-tiny")
    parser.add_argument("--image", default="baby", help="Set5 image name")
    parser.add_argument("--crop", type=int, default=32, help="LR crop side")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", default="1,auto", help="comma-separated batch sizes, 'auto' = hat lam's choice")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="check the batch memory model instead")
    parser.add_argument("--sizes", default="64,96", help="input sides for --memory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (memory if args.memory else speed)(args)


if __name__ == "__main__":
    main()
