"""Calibrate RCAN/HAN's memory model: the peak RSS rise of one forward, against the prediction.

Each probe runs in a fresh process (memory that malloc keeps from earlier forwards would hide the
rise): build a random network, warm it up on a 48 x 48 input (large enough to start the OpenMP
threads, whose stacks and arenas would otherwise count), reset the kernel's high-water mark
(/proc/self/clear_refs), run one fp32 CPU forward under ``torch.inference_mode`` in two stages
(head + body, then tail, as ``RCAN.forward`` does) and print the rise of VmHWM over the RSS before
the forward at the end of each stage. Networks keep 10 groups (HAN's layer attention stacks them
all) but one block per group: blocks run one after another, so they do not change the peak.

The model counts live values, so probes run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: large
blocks then go back to the system when freed and the RSS follows the live set (repeatable to 1%;
glibc's default moving threshold keeps freed blocks and adds 0-60% from run to run). One more probe
per network runs with the default allocator and is checked against prediction * ALLOCATOR_SLACK.

    python benchmarks/bench_memory_rcan.py            # table: measured vs predicted values/px
    python benchmarks/bench_memory_rcan.py --fit      # also least-squares constants for config.py

Values are float32 values per *input* pixel. A ``slope`` is the rise between the 64 and 128 px
tiles over the pixels between them: the per-pixel cost without fixed costs, which ``--fit`` fits per
stage (body: n_feats and HAN's stacked layers; tail: n_feats * scale^2 and n_colors * scale^2).
``live`` is the whole forward's larger rise per pixel (slope, or over the 128 px tile alone, fixed
costs included): the prediction must cover it (ratio >= 1).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hat_cli.model.contract import ALLOCATOR_SLACK
from hat_cli.model.rcan.arch import build_network
from hat_cli.model.rcan.config import HANConfig, RCANConfig

TILES = (64, 128)
LIVE_SET = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def _shapes() -> list[tuple[str, RCANConfig]]:
    def config(cls: type[RCANConfig], feats: int, scale: int) -> RCANConfig:
        return cls(scale=scale, n_feats=feats, n_resgroups=10, n_resblocks=1, reduction=min(16, feats // 2))

    return [
        ("RCAN F16 x2", config(RCANConfig, 16, 2)),
        ("RCAN F16 x8", config(RCANConfig, 16, 8)),
        ("RCAN F32 x3", config(RCANConfig, 32, 3)),
        ("RCAN F64 x4", config(RCANConfig, 64, 4)),
        ("HAN F16 x4", config(HANConfig, 16, 4)),
        ("HAN F32 x3", config(HANConfig, 32, 3)),
        ("HAN F64 x2", config(HANConfig, 64, 2)),
        ("HAN F64 x4", config(HANConfig, 64, 4)),
    ]


def _status(key: str) -> int:
    """A /proc/self/status memory field in bytes (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def probe(index: int, tile: int) -> None:
    """Print the peak RSS rises (bytes) of network ``index``'s head + body and of its tail."""
    torch.manual_seed(0)
    model = build_network(_shapes()[index][1]).eval()
    with torch.inference_mode():
        model(torch.rand(1, 3, 48, 48) * 255)  # warm up kernels, caches and the OpenMP threads
        x = torch.rand(1, 3, tile, tile) * 255
        gc.collect()
        base = _status("VmRSS")
        _reset_peak()
        features = model.head(model.sub_mean(x))
        res = model.forward_body(features)
        res += features
        del features
        body = _status("VmHWM") - base
        _reset_peak()
        model.add_mean(model.tail(res))
        print(body, _status("VmHWM") - base)


def _run_probe(index: int, tile: int, threads: int, env: dict[str, str]) -> tuple[int, int]:
    """(body, tail) rise in bytes."""
    command = [sys.executable, __file__, "--probe", str(index), str(tile), "--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, **env}).stdout
    body, tail = out.split()[-2:]
    return int(body), int(tail)


def _measure(index: int, threads: int) -> dict[int, tuple[int, int]]:
    """(body, tail) rise in bytes per tile size, live set."""
    return {tile: _run_probe(index, tile, threads, LIVE_SET) for tile in TILES}


def _per_pixel(rises: dict[int, tuple[int, int]], stage: int) -> tuple[float, float]:
    """(slope, over the large tile) in float32 values per input pixel."""
    small, large = TILES
    slope = (rises[large][stage] - rises[small][stage]) / 4 / (large**2 - small**2)
    return slope, rises[large][stage] / 4 / large**2


def _lstsq(design: list[list[float]], measured: list[float]) -> np.ndarray:
    constants, *_ = np.linalg.lstsq(np.array(design), np.array(measured), rcond=None)
    return np.maximum(constants, 0.0)


def _fit(rows: list[tuple[RCANConfig, float, float, float]]) -> None:
    """Per-stage least squares on the slopes; the fixed term then covers the largest whole-forward
    measurement above max(body, tail), and the constants are rounded up."""
    body_terms = [[c.n_feats, c.n_feats * c.n_layers if isinstance(c, HANConfig) else 0] for c, *_ in rows]
    tail_terms = [[c.n_feats * c.scale**2, c.n_colors * c.scale**2] for c, *_ in rows]
    body = _lstsq(body_terms, [b for _, b, _, _ in rows])
    tail = _lstsq(tail_terms, [t for _, _, t, _ in rows])
    predicted = np.maximum(np.array(body_terms) @ body, np.array(tail_terms) @ tail)
    fixed = max(0.0, float(np.max(np.array([m for *_, m in rows]) - predicted)))
    names = ("FIXED_VALUES", "BODY_COPIES", "LAYER_STACK_COPIES", "UPSAMPLER_COPIES", "OUTPUT_COPIES")
    values = [fixed, *body, *tail]
    print("\nfit:", ", ".join(f"{n}={v:.2f}" for n, v in zip(names, values, strict=True)))


def calibrate(threads: int, fit: bool) -> None:
    print(
        "| network | body slope | tail slope | live | predicted | predicted / live "
        "| default malloc at 128 | predicted * slack / default |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[tuple[RCANConfig, float, float, float]] = []
    for index, (label, config) in enumerate(_shapes()):
        rises = _measure(index, threads)
        (body, _), (tail, _) = _per_pixel(rises, 0), _per_pixel(rises, 1)
        live = max(_per_pixel({tile: (max(r),) for tile, r in rises.items()}, 0))
        default = max(_run_probe(index, TILES[1], threads, {})) / 4 / TILES[1] ** 2
        predicted = config.working_values_per_pixel()
        print(
            f"| {label} | {body:.0f} | {tail:.0f} | {live:.0f} | {predicted:.0f} | {predicted / live:.2f} "
            f"| {default:.0f} | {predicted * ALLOCATOR_SLACK / default:.2f} |",
            flush=True,
        )
        rows.append((config, body, tail, live))
    if fit:
        _fit(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fit", action="store_true", help="print least-squares constants for config.py")
    parser.add_argument("--probe", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(*args.probe)
        return
    calibrate(args.threads, args.fit)


if __name__ == "__main__":
    main()
