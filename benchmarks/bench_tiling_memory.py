"""Peak memory of tiled upscaling: a large image in bounded RAM, and the memory model's calibration.

Default run: upscale a random ``--size`` x ``--size`` uint8 RGB image through
``Upscaler.upscale_array`` (band-wise assembly into a preallocated uint8 output) on CPU and report
the process's peak RSS (``resource.getrusage(...).ru_maxrss``), against the 8-bit output alone.

    python benchmarks/bench_tiling_memory.py --size 4096            # slow on a small CPU: use nohup
    python benchmarks/bench_tiling_memory.py --size 1024 --tile 256

Model (``--model``): ``auto`` = the bundled ``hat-tiny`` when present, else a random tiny HAT
(embed_dim 24, depths (1,), heads (2,), window 8); or a checkpoint path or preset name.
``--tile auto`` lets the memory model pick the tile under ``--budget`` GiB (output included).

``--calibrate`` instead measures the peak RSS rise of single forwards for a few HAT shapes and tile
sizes (resetting the kernel's high-water mark through /proc/self/clear_refs) and prints it next to
:meth:`hat_cli.model.hat.config.HATConfig.working_values_per_pixel`, whose constants come from this measurement.
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hat_cli.api import Upscaler
from hat_cli.errors import HatError
from hat_cli.model import HAT, HATConfig
from hat_cli.model.contract import ALLOCATOR_SLACK

TINY = HATConfig(
    upscale=4, embed_dim=24, depths=(1,), num_heads=(2,), window_size=8, compress_ratio=3, squeeze_factor=8
)


def _status(key: str) -> int:
    """A /proc/self/status memory field in bytes (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def load(name: str, scale: int) -> tuple[torch.nn.Module, str]:
    if name == "auto":
        try:
            return Upscaler.from_preset("hat-tiny", scale=scale, device="cpu").model, "hat-tiny"
        except HatError:
            torch.manual_seed(0)
            return HAT(TINY).eval(), "random tiny HAT (embed 24, depths (1,), heads (2,), window 8)"
    if Path(name).is_file():
        return Upscaler.from_file(name, device="cpu").model, Path(name).name
    return Upscaler.from_preset(name, scale=scale, device="cpu").model, name


def _calibration_shapes() -> list[tuple[str, HATConfig, bool]]:
    """(label, config, fused attention) of the networks measured by ``--calibrate``."""

    def config(dim: int, heads: int, window: int, scale: int) -> HATConfig:
        return HATConfig(
            upscale=scale, embed_dim=dim, depths=(2,), num_heads=(heads,), window_size=window, squeeze_factor=8
        )

    return [
        ("C24 h2 ws8 x4", config(24, 2, 8, 4), True),
        ("C24 h2 ws8 x2", config(24, 2, 8, 2), True),
        ("C48 h6 ws16 x4", config(48, 6, 16, 4), True),
        ("C96 h2 ws16 x4", config(96, 2, 16, 4), True),
        ("C96 h6 ws16 x4", config(96, 6, 16, 4), True),
        ("C96 h6 ws16 x4, plain attention", config(96, 6, 16, 4), False),
        ("C96 h6 ws8 x4", config(96, 6, 8, 4), True),
        ("C96 h6 ws8 x2", config(96, 6, 8, 2), True),
    ]


def probe(index: int, tile: int) -> None:
    """Print the peak RSS rise (bytes) of one forward; run in a fresh process, so that memory freed
    by earlier forwards (kept by malloc) cannot hide the rise."""
    _, config, fused = _calibration_shapes()[index]
    model = HAT(config, fused_attention=fused).eval()
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32))  # warm up kernels and caches
        x = torch.rand(1, 3, tile, tile)
        gc.collect()
        base = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        model(x)
        print(_status("VmHWM") - base)


def calibrate(threads: int) -> None:
    """Measured peak RSS rise of one forward vs the memory model (float32 values per input pixel)."""
    print("| network | tile | measured values/px | model values/px (no slack) |")
    print("|---|---:|---:|---:|")
    for index, (label, config, fused) in enumerate(_calibration_shapes()):
        predicted = HAT(config, fused_attention=fused).bytes_per_input_pixel() / 4 / ALLOCATOR_SLACK
        for tile in (96, 160):
            command = [sys.executable, __file__, "--probe", str(index), str(tile), "--threads", str(threads)]
            rise = int(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])
            print(f"| {label} | {tile} | {rise / 4 / tile**2:.0f} | {predicted:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--tile", default="auto", help="auto or input pixels")
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--budget", type=float, default=2.0, help="GiB for --tile auto (output included)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--probe", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(*args.probe)
        return
    if args.calibrate:
        calibrate(args.threads)
        return

    model, name = load(args.model, args.scale)
    tile = args.tile if args.tile == "auto" else int(args.tile)
    upscaler = Upscaler(
        model, device="cpu", tile=tile, tile_overlap=args.overlap, memory_budget=int(args.budget * 2**30)
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    before = peak_rss()
    output_bytes = image.nbytes * upscaler.scale**2
    started, last = time.time(), [0.0]

    def progress(done: int, total: int) -> None:
        now = time.time()
        if now - last[0] > 30 or done == total:
            last[0] = now
            eta = (now - started) / done * (total - done)
            print(f"  {done}/{total} tiles, {now - started:.0f} s, ETA {eta:.0f} s", flush=True)

    print(f"model: {name}; input {args.size}x{args.size}; output {output_bytes / 2**30:.2f} GiB uint8")
    out = upscaler.upscale_array(image, progress=progress)
    elapsed = time.time() - started
    stats = upscaler.last_stats
    assert out.shape == (args.size * upscaler.scale, args.size * upscaler.scale, 3) and stats is not None
    peak = peak_rss()
    print(f"tiling: {stats.describe()}")
    print(f"time: {elapsed:.0f} s ({args.size**2 / elapsed / 1e3:.1f} k input px/s)")
    print(
        f"peak RSS: {peak / 2**30:.2f} GiB (before upscaling: {before / 2**30:.2f} GiB; output alone {output_bytes / 2**30:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
