"""GPU proof (issue 18): is the default GPU path (CUDA, bf16, tiles) correct, fast and within its
memory model? One prepared run that fits a device lease, or a CPU smoke run of the same code.

    python3 benchmarks/gpu_check.py OUT_DIR                     # on a GPU: --budget-s 300 by default
    python3 benchmarks/gpu_check.py OUT_DIR --smoke             # CPU, tiny networks, well under a minute

Sections, in order (each one's failure is recorded, never fatal; ``--sections`` picks some):

- ``environment``: torch/CUDA/cuDNN versions, the GPU, its bf16 dense peak from vendor datasheets
  (:data:`BF16_DENSE_TFLOPS`) and the matmul rates measured on the spot (bf16, fp32);
- ``fixtures``: the shared reference cases (``tests/data/hat-reference``) whole, in fp32/bf16/fp16,
  against their float32 outputs: max error (fp32) and PSNR (half precision);
- ``correctness``: HAT-S, HAT and HAT-L (random weights, random bias tables) against a CPU fp32
  reference of the official plain-softmax path, for fp32/bf16/fp16, whole, tiled and with batched
  tiles; non-finite outputs and fp32 recomputations counted; the uint8 path checked against the
  float path rounded;
- ``guard``: the NaN guard: a network made to return NaN in half precision (any device), and on
  CUDA a HAT that really overflows in fp16; nothing non-finite may reach the output;
- ``rcan``: RCAN and HAN x4 (official sizes, random weights, HAN's attention gammas set) through
  ``Upscaler`` against a CPU fp32 reference, fp32 and bf16, whole, tiled and with batched tiles:
  max error (fp32), PSNR (bf16), non-finite outputs;
- ``lam``: LAM (``hat_cli.lam.attribute``, what ``hat lam`` runs) of a tiny HAT and a tiny HAN in
  fp32 on the device against the CPU: attribution (max error over its max), diffusion index, and
  path steps per second (warm);
- ``speed``: HAT-L, HAT, HAT-S x4 on 256^2 and 512^2, ours vs spandrel (same weights, same process,
  alternating, warm), fp32 (TF32 off) and bf16 (autocast): ms per image, input MP/s, share of the
  bf16 dense peak from the counted multiply-adds; then the user path (``Upscaler.upscale_array``
  on uint8, whole 512^2 and 1024^2 in 512^2 tiles);
- ``memory``: peak allocated by one tile forward vs ``bytes_per_input_pixel`` (the ``--tile auto``
  model), per network, precision, tile and batch; and an auto-tiled image under a memory budget;
- ``oom``: a too-small ``set_per_process_memory_fraction``: the run completes by halving, and
  matches the untiled output; on CPU an allocator that fails above a size stands in;
- ``switches``: the speed paths that are off until measured on a GPU (device bands, channels-last,
  cuDNN autotuning), each A/B against the default on the user path, with its output compared;
  host<->device copy rates, pageable vs pinned;
- ``attention``: one attention call at HAT-L's 512^2 shapes: which SDPA kernels take it and how
  fast each is;
- ``compile``: ``Upscaler(compile=True)`` (torch.compile): compile time and speed vs eager on a
  whole 512^2 image; tiles in batches whose last, smaller chunk reuses the graph;
- ``flex``: FlexAttention (compiled) with the bias as a ``score_mod`` on the same calls as
  ``attention``: is wiring it in worth it? (last: it compiles a kernel per shape).

Everything is written to OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md after every row, so a run
stopped from outside still leaves what finished; ``--budget-s`` is a hard wall-clock budget: rows
that would not fit are skipped (and listed), and a watchdog writes the files, prints the table and
exits if a single step (a compile, say) overruns it. The markdown table is printed at the end.

Needs only torch (and this repository); spandrel is optional (rows without it say so): installed,
or as a wheel in ``<repo>/.whl/`` (see ``hat_models.py``). Exit status: 0 when every checked row
passed, 1 when one failed or a section broke, 3 when the watchdog stopped the run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hat_models import (
    DTYPES,
    MODELS,
    REPO,
    build_pair,
    network_macs,
    spandrel_hat_class,
    spandrel_version,
)

from hat_cli import tiling
from hat_cli.api import Upscaler
from hat_cli.checkpoint import load_model
from hat_cli.lam import DEFAULT_KERNEL, DEFAULT_SIGMA, DEFAULT_WINDOW, Window, attribute
from hat_cli.model import HAT, HATConfig, layers
from hat_cli.model.rcan import HANConfig, RCANConfig
from hat_cli.model.rcan.arch import HAN, RCAN, build_network
from hat_cli.model.rcan.config import upsampler_stages
from hat_cli.pixels import quantize, to_tensor
from hat_cli.tiling import RunReport, TileEngine, make_plan

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s: the H100 and H200
# datasheets list 1,979 (SXM) and 1,513 (H100 PCIe) "with sparsity", i.e. 989 and 756 dense; the
# A100 datasheet lists 312 dense (624 with sparsity). Matched against torch's device name.
BF16_DENSE_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)
FIXTURE_DIRS = (
    REPO / "tests" / "data" / "hat-reference",
    REPO.parent / "shared" / "fixtures" / "hat-reference",
    REPO / "shared" / "fixtures" / "hat-reference",
)
PSNR_GOAL = 45.0  # dB, half precision vs fp32 (the goal)
OOM_PSNR = 40.0  # dB, a run tiled by out-of-memory halving vs the untiled run
OOM_SHARE = 0.3  # memory allowed above the weights in the oom section, as a share of the whole forward's
FIXTURE_FP32_TOL = 1e-5
LAM_TOL = 1e-4  # max abs error of the device's LAM attribution over the CPU one's max abs value
LAM_DI_TOL = 0.01  # diffusion index, device vs CPU (the reference fixtures' tolerance)
MIB = 2**20


@dataclass(frozen=True)
class Sizes:
    """What one kind of run (GPU or smoke) works on."""

    models: dict[str, HATConfig]
    correctness_hw: tuple[int, int]  # image for the correctness rows
    tile: int  # tile and overlap of the tiled correctness rows
    overlap: int
    speed: tuple[int, ...]  # square input sides of the speed rows
    e2e_whole: int  # user-path rows: a whole image, and a larger one in tiles of e2e_tile
    e2e_tiled: int
    e2e_tile: int
    memory_tiles: tuple[tuple[int, int], ...]  # (tile, batch)
    memory_image: int  # the auto-tiled image of the memory section
    oom_image: int
    compile_side: int  # whole image of the compile speed row (the smoke one reuses the tiled graph)
    repeats: int
    matmul: int  # side of the peak-rate matmul
    fp32_tol: float  # max abs error of fp32 rows vs the CPU reference
    rcan: dict[str, RCANConfig]  # the rcan section's networks (on the correctness image and tiles)
    lam_models: dict[str, HATConfig | RCANConfig]
    lam_side: int  # square LR image of the LAM rows
    lam_steps: int  # path steps (the official LAM: 50)


def official(name: str) -> HATConfig:
    return HATConfig(upscale=4, window_size=16, mlp_ratio=2.0, **MODELS[name])


def tiny(embed: int, depths: tuple[int, ...], heads: int, compress: int, squeeze: int) -> HATConfig:
    """A small x4 HAT with the official one's shape (window 8, head dims 8 or 10)."""
    return HATConfig(
        upscale=4,
        embed_dim=embed,
        depths=depths,
        num_heads=(heads,) * len(depths),
        window_size=8,
        compress_ratio=compress,
        squeeze_factor=squeeze,
        mlp_ratio=2.0,
    )


# Tiny x4 networks for LAM (on a GPU too: the point is the gradient path on the device, not its speed).
LAM_MODELS: dict[str, HATConfig | RCANConfig] = {
    "hat (tiny)": tiny(30, (1, 1), 3, 3, 30),
    "han (tiny)": HANConfig(scale=4, n_feats=16, n_resgroups=3, n_resblocks=2, reduction=4),
}

GPU = Sizes(
    models={name: official(name) for name in ("hat-l", "hat", "hat-s")},
    correctness_hw=(96, 128),
    tile=64,
    overlap=32,
    speed=(256, 512),
    e2e_whole=512,
    e2e_tiled=1024,
    e2e_tile=512,
    memory_tiles=((256, 1), (512, 1), (256, 4)),
    memory_image=1536,
    oom_image=512,
    compile_side=512,
    repeats=3,
    matmul=8192,
    fp32_tol=1e-4,
    rcan={"han": HANConfig(scale=4), "rcan": RCANConfig(scale=4)},  # the official x4 sizes (64 feats, 10x20)
    lam_models=LAM_MODELS,
    lam_side=48,
    lam_steps=50,
)
SMOKE = Sizes(
    models={
        "hat-l": tiny(30, (1, 1, 1), 3, 3, 30),
        "hat": tiny(30, (1, 1), 3, 3, 30),
        "hat-s": tiny(24, (1,), 3, 24, 24),
    },
    correctness_hw=(24, 48),
    tile=16,
    overlap=8,
    speed=(16, 32),
    e2e_whole=32,
    e2e_tiled=48,
    e2e_tile=16,
    memory_tiles=((16, 1), (32, 1), (16, 4)),
    memory_image=48,
    oom_image=32,
    compile_side=24,
    repeats=1,
    matmul=256,
    fp32_tol=1e-5,
    rcan={
        "han": HANConfig(scale=4, n_feats=8, n_resgroups=3, n_resblocks=2, reduction=2),
        "rcan": RCANConfig(scale=4, n_feats=8, n_resgroups=3, n_resblocks=2, reduction=2),
    },
    lam_models=LAM_MODELS,
    lam_side=16,
    lam_steps=4,
)


# --------------------------------------------------------------------------- results and budget


class Skip(Exception):
    """A row or section that cannot run here (no CUDA, no spandrel, no budget): recorded, not failed."""


class Check:
    """The run's results, its budget, and the files they are written to after every row."""

    def __init__(self, out: Path, args: argparse.Namespace, sizes: Sizes, device: torch.device) -> None:
        self.out, self.args, self.sizes, self.device = out, args, sizes, device
        self.cuda = device.type == "cuda"
        self.start = time.monotonic()
        self.lock = threading.RLock()
        self.section = ""
        self.peaks: dict[str, float] = {}  # measured matmul FLOP/s per dtype name
        self.spec_bf16: float | None = None  # FLOP/s
        self.data: dict[str, Any] = {
            "meta": {
                "mode": "smoke" if args.smoke else "gpu",
                "device": str(device),
                "budget_s": args.budget_s,
                "argv": sys.argv[1:],
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "status": "running",
            },
            "environment": {},
            "sections": {},
        }

    # budget ------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def need(self, seconds: float, what: str) -> None:
        """Skip ``what`` unless an estimated ``seconds`` of budget is left."""
        if seconds > self.remaining():
            raise Skip(f"budget: {what} needs ~{seconds:.0f} s, {max(0.0, self.remaining()):.0f} s left")

    # recording ---------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        return self.data["sections"].setdefault(self.section, {"status": "running", "rows": [], "notes": []})

    def row(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            clean = {k: _jsonable(v) for k, v in fields.items()}
            self.current()["rows"].append(clean)
            self.flush()
        return clean

    def note(self, text: str) -> None:
        with self.lock:
            self.current()["notes"].append(text)
            self.flush()
        print(f"# {self.section}: {text}", flush=True)

    def flush(self) -> None:
        with self.lock:
            self.data["meta"]["elapsed_s"] = round(self.elapsed(), 1)
            self.out.mkdir(parents=True, exist_ok=True)
            for name, text in (("gpu_check.json", json.dumps(self.data, indent=1)), ("gpu_check.md", markdown(self))):
                temp = self.out / f".{name}.tmp"
                temp.write_text(text)
                temp.replace(self.out / name)

    def failed_rows(self) -> list[str]:
        return [
            f"{name}: {row}"
            for name, section in self.data["sections"].items()
            for row in section["rows"]
            if row.get("pass") is False
        ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else (float(f"{value:.5g}") if math.isfinite(value) else str(value))
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return _jsonable(value.item())
    return value


def watchdog(check: Check, grace: float) -> None:
    """Past budget + grace (a compile that never ends, say): write what finished, print it, exit."""

    def fire() -> None:
        if finished.wait(max(0.0, check.args.budget_s + grace - check.elapsed())):
            return
        acquired = check.lock.acquire(timeout=10)
        check.data["meta"]["status"] = f"stopped by the watchdog in section {check.section!r}"
        check.current()["status"] = "stopped by the watchdog"
        with contextlib.suppress(Exception):
            check.flush()
        print(markdown(check), flush=True)
        if acquired:
            check.lock.release()
        os._exit(3)

    threading.Thread(target=fire, daemon=True, name="gpu-check-watchdog").start()


finished = threading.Event()


# --------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR (dB) of two float images in 0..1, clamped as a file would be."""
    mse = (a.double().clamp(0, 1) - b.double().clamp(0, 1)).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def max_err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def non_finite(t: Tensor) -> int:
    return int((~torch.isfinite(t)).sum().item())


def sample_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8: smooth structure plus noise, like a photo crop."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 4 + 2, width // 4 + 2, generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    image = (0.7 * smooth + 0.3 * torch.rand(3, height, width, generator=g)).clamp(0, 1)
    return quantize(image)


def random_hat(config: HATConfig, seed: int = 0) -> HAT:
    """Random weights; bias tables N(0, 1) so that biases and shift masks matter (in low precision too)."""
    torch.manual_seed(seed)
    model = HAT(config).eval().requires_grad_(False)
    for name, param in model.named_parameters():
        if "relative_position_bias_table" in name:
            param.data.normal_(0, 1)
    return model


def random_rcan(config: RCANConfig, seed: int = 0) -> RCAN:
    """Random weights (torch's initialisation); HAN's zero-initialised attention gammas set (layer
    attention 0.5, channel-spatial 0.8, as in tests/test_rcan_han.py) so that both attentions count."""
    torch.manual_seed(seed)
    model = build_network(config)
    if isinstance(model, HAN):
        with torch.no_grad():
            model.la.gamma.fill_(0.5)
            model.csa.gamma.fill_(0.8)
    return model.eval().requires_grad_(False)


def rcan_gflop(config: RCANConfig, height: int, width: int) -> float:
    """2 x the multiply-adds of one RCAN/HAN forward: every conv at its resolution (from the
    parameter shapes), HAN's banded channel-spatial conv and its layer attention (energies, mixing)."""
    areas = [1]  # pixels of each upsampler stage's input, per input pixel
    for factor in upsampler_stages(config.scale)[:-1]:
        areas.append(areas[-1] * factor)
    per_pixel = 0
    for key, shape in config.param_shapes().items():
        if key == "csa.conv.weight":
            per_pixel += 9 * config.n_feats**2  # run as a C -> C 3x3 conv
        elif key.endswith(".weight"):
            if key.startswith("tail.0."):
                area = areas[int(key.split(".")[2]) // 2]
            else:
                area = config.scale**2 if key in ("tail.1.weight", "add_mean.weight") else 1
            per_pixel += math.prod(shape) * area
    if isinstance(config, HANConfig):
        per_pixel += 2 * config.n_layers**2 * config.n_feats
    return 2 * per_pixel * height * width / 1e9


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(runners: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each runner; one untimed warm run each, then timed rounds in ABBA order."""
    for fn in runners.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(runners[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def autocast(device: torch.device, dtype: torch.dtype):
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def dtypes_here(check: Check, names: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> list[str]:
    """fp16 is CUDA-only in hat_cli (Upscaler refuses it on CPU)."""
    return [n for n in names if check.cuda or n != "fp16"]


def gflop(config: HATConfig, height: int, width: int) -> float:
    return 2 * network_macs(config, height, width) / 1e9


def peak_share(check: Check, flop_per_s: float, dtype: str) -> dict[str, float | None]:
    spec = check.spec_bf16
    measured = check.peaks.get(dtype)
    return {
        "pct_bf16_spec": None if spec is None else 100 * flop_per_s / spec,
        f"pct_measured_{dtype}": None if not measured else 100 * flop_per_s / measured,
    }


@contextlib.contextmanager
def switched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# --------------------------------------------------------------------------- sections


def section_environment(check: Check) -> None:
    env = check.data["environment"]
    env.update(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        cpu_threads=torch.get_num_threads(),
        spandrel=spandrel_version(),
        fixtures=str(find_fixtures() or "missing"),
        flex_attention=importlib.util.find_spec("torch.nn.attention.flex_attention") is not None,
    )
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        name = torch.cuda.get_device_name(check.device)
        env.update(
            gpu=name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
        spec = next((tflops for key, tflops in BF16_DENSE_TFLOPS if key in name), None)
        env["bf16_dense_spec_tflops"] = spec
        check.spec_bf16 = spec * 1e12 if spec else None
        with contextlib.suppress(Exception):
            query = "name,driver_version,clocks.max.sm,power.limit"
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            env["nvidia_smi"] = smi.stdout.strip()
    else:
        env.update(gpu=None, bf16_dense_spec_tflops=None, cpu=platform.processor() or platform.machine())
    for name in ("bf16", "fp32"):
        rate = matmul_rate(check.device, DTYPES[name], check.sizes.matmul)
        check.peaks[name] = rate
        env[f"measured_{name}_matmul_tflops"] = round(rate / 1e12, 2)
        check.row(what=f"{name} matmul {check.sizes.matmul}^3", tflops=rate / 1e12)
    check.flush()


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Best FLOP/s of a square matmul (random data) after warm-up: the achievable peak here."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 2
    best = math.inf
    for i in range(4):
        seconds = timed(lambda: [a @ b for _ in range(inner)], device) / inner
        if i:
            best = min(best, seconds)
    return 2 * size**3 / best


def find_fixtures() -> Path | None:
    return next((d for d in FIXTURE_DIRS if (d / "manifest.json").is_file()), None)


def precision_row(check: Check, upscaler: Upscaler, x: Tensor, ref: Tensor, **labels: Any) -> tuple[dict, Tensor]:
    """One correctness row: ``upscaler`` on ``x`` against ``ref`` (max error, PSNR, non-finite
    values, fp32 recomputes); fp32 passes within the tolerance, half precision at the PSNR goal."""
    start = time.perf_counter()
    out = upscaler.upscale_tensor(x)
    seconds = time.perf_counter() - start
    stats = upscaler.last_stats
    row = dict(
        **labels,
        batch=stats.batch if stats else None,
        max_abs_err=max_err(out, ref),
        psnr_db=psnr(out, ref),
        non_finite=non_finite(out),
        fp32_recomputed=stats.report.fp32_fallbacks if stats else None,
        seconds=seconds,
    )
    good = row["max_abs_err"] <= check.sizes.fp32_tol if labels["dtype"] == "fp32" else row["psnr_db"] >= PSNR_GOAL
    row["pass"] = good and row["non_finite"] == 0
    return row, out


def section_fixtures(check: Check) -> None:
    folder = find_fixtures()
    if folder is None:
        raise Skip(f"no reference fixtures in {', '.join(str(d) for d in FIXTURE_DIRS)}")
    check.note(f"fixtures from {folder}")
    manifest = json.loads((folder / "manifest.json").read_text())
    from PIL import Image

    for name, entry in manifest.items():
        model = load_model(folder / entry["checkpoint"])
        for case in entry["cases"]:
            array = np.asarray(Image.open(folder / case["input"]).convert("RGB"))
            expected = torch.from_numpy(np.load(folder / case["output_npy"]))[None]
            for dtype in dtypes_here(check):
                upscaler = Upscaler(model, device=check.device, precision=dtype, tile=0)
                out = upscaler.upscale_tensor(to_tensor(array)[None])
                report = upscaler.last_stats.report if upscaler.last_stats else RunReport()
                row = dict(
                    case=case["input"],
                    model=name,
                    dtype=dtype,
                    max_abs_err=max_err(out, expected),
                    psnr_db=psnr(out, expected),
                    non_finite=non_finite(out),
                    fp32_recomputed=report.fp32_fallbacks,
                )
                if dtype == "fp32":
                    row["pass"] = row["max_abs_err"] <= FIXTURE_FP32_TOL and row["non_finite"] == 0
                    row["tolerance"] = f"max err <= {FIXTURE_FP32_TOL:g}"
                else:
                    row["pass"] = row["psnr_db"] >= PSNR_GOAL and row["non_finite"] == 0
                    row["tolerance"] = f"PSNR >= {PSNR_GOAL:g} dB"
                check.row(**row)


def section_correctness(check: Check) -> None:
    sizes = check.sizes
    height, width = sizes.correctness_hw
    array = sample_image(height, width, seed=1)
    x = to_tensor(array)[None]
    check.note(
        f"image {width}x{height}, tiles {sizes.tile} overlap {sizes.overlap}; reference: CPU fp32 of the official "
        "plain-softmax path (whole, and tiled for the tiled rows); fp32 here with TF32 off"
    )
    for name, config in sizes.models.items():
        columns = len(make_plan(height, width, 4, config.window_size, sizes.tile, sizes.overlap).xs)
        # CPU references: whole + tiled ~ 3x the image's work on the slower plain path, at ~500 GFLOP/s.
        check.need(4.5 * gflop(config, height, width) / (500 if check.cuda else 20) + 2, f"correctness {name}")
        model = random_hat(config)
        reference = copy.deepcopy(model)
        reference.set_fused_attention(False)
        started = time.perf_counter()
        cpu = Upscaler(reference, device="cpu", precision="fp32", tile=0)
        ref_whole = cpu.upscale_tensor(x)
        cpu = Upscaler(reference, device="cpu", precision="fp32", tile=sizes.tile, tile_overlap=sizes.overlap)
        ref_tiled = cpu.upscale_tensor(x)
        check.note(
            f"{name}: CPU references {time.perf_counter() - started:.1f} s; tiled vs whole (fp32, seams): "
            f"{psnr(ref_tiled, ref_whole):.1f} dB"
        )
        del reference, cpu
        for dtype in dtypes_here(check):
            for mode, tile, batch in (("whole", 0, None), ("tiled", sizes.tile, 1), ("batched", sizes.tile, columns)):
                ref = ref_whole if mode == "whole" else ref_tiled
                upscaler = Upscaler(
                    model, device=check.device, precision=dtype, tile=tile, tile_overlap=sizes.overlap, tile_batch=batch
                )
                row, out = precision_row(check, upscaler, x, ref, model=name, dtype=dtype, mode=mode)
                if mode == "batched" and dtype == ("bf16" if check.cuda else "fp32"):
                    # The file path (bands quantised as they finish) equals the float path rounded.
                    pixels = upscaler.upscale_array(array)
                    row["uint8_equals_float_rounded"] = bool(np.array_equal(pixels, quantize(out[0])))
                    row["pass"] = row["pass"] and row["uint8_equals_float_rounded"]
                check.row(**row)
        del model
        release(check.device)


class NaNInHalf(nn.Module):
    """x2 nearest upsampling (exact in any precision) that returns NaN under autocast for tiles
    holding the image's brightest pixel, as a HAT overflowing in fp16 would."""

    scale, size_multiple, input_range, in_channels = 2, 8, 1.0, 3

    def __init__(self) -> None:
        super().__init__()
        self.half_calls = 0

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return 1000.0

    def forward(self, x: Tensor) -> Tensor:
        out = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) * 0.5 + 0.25
        if torch.is_autocast_enabled(x.device.type):
            self.half_calls += 1
            bright = (x.amax(dim=(1, 2, 3)) > 0.99)[:, None, None, None]
            out = torch.where(bright, torch.full_like(out, float("nan")), out)
        return out


def section_guard(check: Check) -> None:
    """Non-finite half-precision tiles are recomputed in fp32; nothing non-finite reaches a file."""
    array = (sample_image(40, 72, seed=3).astype(np.float32) * 0.9).astype(np.uint8)
    array[3, 5] = 255  # only the top-left tile sees it
    half = "fp16" if check.cuda else "bf16"
    model = NaNInHalf()
    fp32 = Upscaler(model, device=check.device, precision="fp32", tile=32, tile_overlap=16).upscale_array(array)
    upscaler = Upscaler(model, device=check.device, precision=half, tile=32, tile_overlap=16, tile_batch=2)
    pixels = upscaler.upscale_array(array)
    stats = upscaler.last_stats
    recomputed = stats.report.fp32_fallbacks if stats else 0
    check.row(
        case=f"NaN injected under autocast (1 of {stats.grid[0] * stats.grid[1] if stats else '?'} tiles)",
        dtype=half,
        fp32_recomputed=recomputed,
        equals_fp32_output=bool(np.array_equal(pixels, fp32)),
        **{"pass": recomputed == 1 and bool(np.array_equal(pixels, fp32))},
    )
    if not check.cuda:
        check.note("real fp16 overflow: skipped: no CUDA (hat_cli runs fp16 on CUDA only)")
        return
    # A real overflow: conv_first scaled so its fp16 outputs pass 65504; fp32 stays finite.
    model = random_hat(SMOKE.models["hat-s"])
    model.conv_first.weight.data.mul_(1e6)
    array = sample_image(48, 64, seed=4)
    x = to_tensor(array)[None].to(check.device)
    model.to(check.device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        unguarded = non_finite(model(x))
    fp32 = Upscaler(model, device=check.device, precision="fp32", tile=0).upscale_tensor(x.cpu())
    upscaler = Upscaler(model, device=check.device, precision="fp16", tile=0)
    out = upscaler.upscale_tensor(x.cpu())
    stats = upscaler.last_stats
    relative = max_err(out, fp32) / max(fp32.abs().max().item(), 1e-12)
    check.row(
        case="HAT overflowing in fp16 (conv_first x 1e6)",
        dtype="fp16",
        non_finite_without_guard=unguarded,
        fp32_recomputed=stats.report.fp32_fallbacks if stats else None,
        non_finite=non_finite(out),
        relative_err_vs_fp32=relative,
        **{"pass": unguarded > 0 and non_finite(out) == 0 and relative <= 1e-5},
    )


def section_rcan(check: Check) -> None:
    """RCAN and HAN x4 (random weights) through ``Upscaler`` on the device, fp32 and bf16, whole,
    tiled and with batched tiles, against a CPU fp32 reference (whole, or tiled for the tiled rows:
    the channel and layer attention see the whole input, so tiles change the result)."""
    sizes = check.sizes
    height, width = sizes.correctness_hw
    array = sample_image(height, width, seed=12)
    x = to_tensor(array)[None]
    check.note(
        f"image {width}x{height}, tiles {sizes.tile} overlap {sizes.overlap}; random weights, HAN's attention "
        "gammas 0.5 (layer) and 0.8 (channel-spatial); fp32 here with TF32 off"
    )
    for name, config in sizes.rcan.items():
        work = rcan_gflop(config, height, width)
        columns = len(make_plan(height, width, config.scale, 1, sizes.tile, sizes.overlap).xs)
        # CPU references: whole + tiled ~ 3x the image's work, at ~500 GFLOP/s (20 on the smoke's one thread).
        check.need(4.5 * work / (500 if check.cuda else 20) + 2, f"rcan {name}")
        model = random_rcan(config)
        reference = copy.deepcopy(model)
        started = time.perf_counter()
        ref_whole = Upscaler(reference, device="cpu", precision="fp32", tile=0).upscale_tensor(x)
        cpu = Upscaler(reference, device="cpu", precision="fp32", tile=sizes.tile, tile_overlap=sizes.overlap)
        ref_tiled = cpu.upscale_tensor(x)
        check.note(
            f"{name}: {config.num_params / 1e6:.2f} M parameters, {work:.3g} GFLOP whole; CPU references "
            f"{time.perf_counter() - started:.1f} s; output in [{ref_whole.min().item():.3f}, "
            f"{ref_whole.max().item():.3f}], std {ref_whole.std().item():.3f}; tiled vs whole (fp32): "
            f"{psnr(ref_tiled, ref_whole):.1f} dB"
        )
        del reference, cpu
        for dtype in ("fp32", "bf16"):
            for mode, tile, batch in (("whole", 0, None), ("tiled", sizes.tile, 1), ("batched", sizes.tile, columns)):
                ref = ref_whole if mode == "whole" else ref_tiled
                upscaler = Upscaler(
                    model, device=check.device, precision=dtype, tile=tile, tile_overlap=sizes.overlap, tile_batch=batch
                )
                row, _ = precision_row(check, upscaler, x, ref, model=name, dtype=dtype, mode=mode)
                check.row(**row)
        del model
        release(check.device)


def section_lam(check: Check) -> None:
    """LAM (:func:`hat_cli.lam.attribute`, what ``hat lam`` runs) in fp32 on the device against the
    CPU: attribution, diffusion index and SR of the same path; path steps per second, warm."""
    sizes, device = check.sizes, check.device
    side = sizes.lam_side
    array = sample_image(side, side, seed=13)
    check.note(
        f"image {side}x{side}, {sizes.lam_steps} steps, sigma {DEFAULT_SIGMA:g}, kernel {DEFAULT_KERNEL}, "
        f"window {DEFAULT_WINDOW} at the SR centre; steps batched as lam.attribute chooses; the device is "
        "run twice: compared (first, includes warm-up) and timed (second)"
    )
    for name, config in sizes.lam_models.items():
        check.need(15.0 if check.cuda else 3.0, f"lam {name}")
        if isinstance(config, HATConfig):
            model: nn.Module = random_hat(config)
            scale = config.upscale
        else:
            model, scale = random_rcan(config), config.scale
        corner = (side * scale - DEFAULT_WINDOW) // 2
        window = Window(corner, corner, DEFAULT_WINDOW)
        kwargs: dict[str, Any] = dict(sigma=DEFAULT_SIGMA, steps=sizes.lam_steps, kernel=DEFAULT_KERNEL)
        cpu = attribute(model, array, window, device="cpu", **kwargs)
        on_device = copy.deepcopy(model).to(device)
        first = attribute(on_device, array, window, device=device, **kwargs)
        again = attribute(on_device, array, window, device=device, **kwargs)
        peak = float(np.abs(cpu.attribution).max())
        relative = float(np.abs(first.attribution - cpu.attribution).max()) / max(peak, 1e-30)
        di_diff = abs(first.diffusion_index - cpu.diffusion_index)
        bad = int((~np.isfinite(first.attribution)).sum() + (~np.isfinite(first.sr)).sum())
        row = dict(
            model=name,
            image=side,
            window=f"{window.size} at {window.x},{window.y}",
            steps=first.steps,
            dtype="fp32",
            batch=again.batch,
            attribution_rel_err=relative,
            map_max_err=float(np.abs(first.map - cpu.map).max()),
            sr_max_err=float(np.abs(first.sr - cpu.sr).max()),
            di_cpu=cpu.diffusion_index,
            di_device=first.diffusion_index,
            di_diff=di_diff,
            non_finite=bad,
            steps_per_s=again.steps_per_second,
            first_steps_per_s=first.steps_per_second,
            cpu_steps_per_s=cpu.steps_per_second,
        )
        row["pass"] = relative <= LAM_TOL and di_diff <= LAM_DI_TOL and bad == 0 and peak > 0
        check.row(**row)
        del model, on_device
        release(device)


def load_spandrel(check: Check) -> str | None:
    """None when spandrel's HAT can be built, else why not."""
    if check.args.no_spandrel:
        return "spandrel rows off (--no-spandrel)"
    try:
        spandrel_hat_class()
    except Exception as exc:
        return f"spandrel not available: {exc}"
    return None


def section_speed(check: Check) -> None:
    sizes, device = check.sizes, check.device
    missing = load_spandrel(check)
    if missing:
        check.note(missing)
    check.note("fp32 = IEEE fp32 (TF32 off) for both; bf16 = autocast for both; batch 1; ms = median wall time")
    for name, config in sizes.models.items():
        # Both networks, bf16 and fp32, every size, 1 warm + repeats runs each: ~ spandrel 2.5x ours.
        rate = {"bf16": 150e12, "fp32": 20e12} if check.cuda else {"bf16": 40e9, "fp32": 60e9}
        work = sum(gflop(config, s, s) * 1e9 * (1 + sizes.repeats) * 3.5 / rate[d] for s in sizes.speed for d in rate)
        check.need(work + 5, f"speed {name}")
        if missing:
            ours, spandrel = random_hat(config), None
        else:
            ours, spandrel = build_pair(config)
        ours.to(device)
        if spandrel is not None:
            spandrel.to(device)
        for dtype_name in ("bf16", "fp32"):
            dtype = DTYPES[dtype_name]
            for size in sizes.speed:
                torch.manual_seed(size)
                x = torch.rand(1, 3, size, size, device=device)
                flops = gflop(config, size, size) * 1e9
                with torch.inference_mode(), autocast(device, dtype):
                    runners: dict[str, Callable[[], object]] = {"ours": functools.partial(ours, x)}
                    err = None
                    if spandrel is not None:
                        runners["spandrel"] = functools.partial(spandrel, x)
                        err = max_err(ours(x).float(), spandrel(x).float())
                    times = alternate(runners, device, sizes.repeats)
                mp = size * size / 1e6
                row = dict(model=name, size=size, dtype=dtype_name, gflop=flops / 1e9, ours_ms=1e3 * times["ours"])
                row["ours_mps"] = mp / times["ours"]
                row.update(peak_share(check, flops / times["ours"], dtype_name))
                if spandrel is not None:
                    row.update(
                        spandrel_ms=1e3 * times["spandrel"],
                        spandrel_mps=mp / times["spandrel"],
                        speedup=times["spandrel"] / times["ours"],
                        spandrel_pct_bf16_spec=(
                            None if check.spec_bf16 is None else 100 * flops / times["spandrel"] / check.spec_bf16
                        ),
                        max_abs_err_vs_spandrel=err,
                    )
                check.row(**row)
        del spandrel
        if name == next(iter(sizes.models)):  # the user path on the first (largest) network
            user_path(check, name, config, ours)
        del ours
        release(device)


def user_path(check: Check, name: str, config: HATConfig, model: HAT) -> None:
    """``Upscaler.upscale_array`` on uint8 images, bf16 (the default on CUDA): whole and in tiles."""
    sizes, device = check.sizes, check.device
    for side, tile in ((sizes.e2e_whole, 0), (sizes.e2e_tiled, sizes.e2e_tile)):
        array = sample_image(side, side, seed=5)
        upscaler = Upscaler(model, device=device, precision="bf16", tile=tile)
        plan = make_plan(side, side, 4, config.window_size, tile)
        extent = (plan.tile_h, plan.tile_w)
        flops = plan.tiles * gflop(config, *extent) * 1e9
        check.need(3 * flops / (100e12 if check.cuda else 40e9) + 2, f"user path {name} {side}")
        seconds = alternate({"ours": lambda a=array, u=upscaler: u.upscale_array(a)}, device, 2)["ours"]
        stats = upscaler.last_stats
        row = dict(
            model=name,
            size=side,
            dtype="bf16",
            path="Upscaler.upscale_array (uint8)",
            layout=stats.describe() if stats else "",
            ours_ms=1e3 * seconds,
            ours_mps=side * side / 1e6 / seconds,
            gflop=flops / 1e9,
        )
        row.update(peak_share(check, flops / seconds, "bf16"))
        check.row(**row)


def section_memory(check: Check) -> None:
    """Peak allocated by one tile forward (the engine's: input copy, forward, fp32 output) vs the model."""
    sizes, device = check.sizes, check.device
    if not check.cuda:
        check.note("measured peaks: skipped: no CUDA (predictions only)")
    for name, config in sizes.models.items():
        model = random_hat(config).to(device)
        for dtype_name in ("bf16", "fp32"):
            dtype = DTYPES[dtype_name]
            for tile, batch in sizes.memory_tiles:
                per_pixel = model.bytes_per_input_pixel(dtype)
                predicted = per_pixel * batch * tile * tile
                row = dict(model=name, dtype=dtype_name, tile=tile, batch=batch, predicted_mib=predicted / MIB)
                if check.cuda:
                    check.need(3 * batch * gflop(config, tile, tile) * 1e9 / 20e12 + 1, f"memory {name} {tile}")
                    engine = TileEngine(model, device, dtype, batch)
                    tiles = torch.rand(batch, 3, tile, tile)
                    release(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    before = torch.cuda.memory_allocated(device)
                    with torch.inference_mode():
                        out = engine.forward(tiles)
                    sync(device)
                    peak = torch.cuda.max_memory_allocated(device) - before
                    del out
                    ratio = peak / predicted
                    row.update(
                        peak_mib=peak / MIB,
                        peak_over_predicted=ratio,
                        measured_bytes_per_px=peak / (batch * tile * tile),
                        model_bytes_per_px=per_pixel,
                        within_15pct=0.85 <= ratio <= 1.0,
                    )
                    row["pass"] = ratio <= 1.0  # never above the prediction (the OOM halving catches the rest)
                check.row(**row)
        if name == "hat" or check.args.smoke:
            auto_tile_under_budget(check, name, model)
        del model
        release(device)


def auto_tile_under_budget(check: Check, name: str, model: HAT) -> None:
    """``--tile auto`` under a memory budget: the plan's estimate, and the peak of the whole run."""
    sizes, device = check.sizes, check.device
    side = sizes.memory_image
    per_pixel = model.bytes_per_input_pixel(torch.bfloat16)
    budget = int(per_pixel * (side // 3) ** 2)  # room for tiles of about a third of the side
    if not check.cuda:  # CPU: the band and the output share the budget (on CUDA they are in host RAM)
        budget += 2 * 4 * 3 * (4 * side) ** 2
    upscaler = Upscaler(model, device=device, precision="bf16", tile="auto", memory_budget=budget)
    array = sample_image(side, side, seed=6)
    plan, stats = upscaler.plan(side, side, 3)
    row = dict(model=name, dtype="bf16", image=side, budget_mib=budget / MIB, layout=stats.describe())
    if check.cuda:
        check.need(plan.tiles * 3 * gflop(model.config, plan.tile_h, plan.tile_w) * 1e9 / 50e12 + 2, "auto tile")
        release(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        upscaler.upscale_array(array)
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        row.update(peak_mib=peak / MIB, peak_over_budget=peak / budget, **{"pass": peak <= budget})
    else:
        upscaler.upscale_array(array)
    check.row(**row)


class FailsAbove(nn.Module):
    """Stands in for a full GPU on CPU: a network whose forward fails like CUDA's allocator when its
    input has more than ``limit`` pixels (over the batch)."""

    def __init__(self, inner: HAT, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.scale, self.size_multiple, self.input_range, self.in_channels = inner.scale, inner.size_multiple, 1.0, 3

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return self.inner.bytes_per_input_pixel(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] * x.shape[-2] * x.shape[-1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def section_oom(check: Check) -> None:
    sizes, device = check.sizes, check.device
    config = sizes.models["hat-s"]
    side = sizes.oom_image
    model = random_hat(config).to(device)
    array = sample_image(side, side, seed=7)
    x = to_tensor(array)[None]
    reference = Upscaler(model, device=device, precision="bf16", tile=0).upscale_tensor(x)
    whole_bytes = model.bytes_per_input_pixel(torch.bfloat16) * side * side
    cases = (("whole image, too big", 0, None), ("tiles of half the side, batched", side // 2, 4))
    for case, tile, batch in cases:
        if check.cuda:
            check.need(10 * gflop(config, side, side) * 1e9 / 20e12 + 3, f"oom {case}")
            release(device)
            total = torch.cuda.get_device_properties(device).total_memory
            # 30% of the predicted whole forward: the whole image must fail unless the model
            # over-predicts 3x; a quarter-size tile fits if it is within 20% of the model.
            allowed = torch.cuda.memory_allocated(device) + OOM_SHARE * whole_bytes
            runner: Any = model
            torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), device)
            limit = (
                f"{allowed / MIB:.0f} MiB allowed ({OOM_SHARE:.0%} of the predicted whole forward above the weights)"
            )
        else:
            runner = FailsAbove(model, limit=int(0.3 * side * side))
            limit = "simulated: no CUDA (a forward of more than 30% of the image's pixels fails)"
        try:
            upscaler = Upscaler(runner, device=device, precision="bf16", tile=tile, tile_batch=batch)
            out = upscaler.upscale_tensor(x)
        finally:
            if check.cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
                release(device)
        stats = upscaler.last_stats
        report = stats.report if stats else RunReport()
        row = dict(
            case=case,
            limit=limit,
            planned=stats.describe() if stats else "",
            oom_retries=report.oom_retries,
            smallest_tile=report.smallest_tile,
            psnr_vs_untiled_db=psnr(out, reference),
            max_abs_err=max_err(out, reference),
            non_finite=non_finite(out),
        )
        row["pass"] = report.oom_retries > 0 and row["psnr_vs_untiled_db"] >= OOM_PSNR and row["non_finite"] == 0
        check.row(**row)


def section_switches(check: Check) -> None:
    """A/B of the speed paths that stay off until measured here, on the user path (bf16, tiles)."""
    sizes, device = check.sizes, check.device
    name, config = next(iter(sizes.models.items()))
    model = random_hat(config).to(device)
    side, tile = sizes.e2e_tiled, sizes.e2e_tile
    array = sample_image(side, side, seed=8)
    plan = make_plan(side, side, 4, config.window_size, tile)
    flops = plan.tiles * gflop(config, plan.tile_h, plan.tile_w) * 1e9
    per_run = flops / (100e12 if check.cuda else 40e9) + 0.5

    def run(upscaler: Upscaler) -> np.ndarray:
        return upscaler.upscale_array(array)

    base = Upscaler(model, device=device, precision="bf16", tile=tile)
    expected = run(base)
    variants: list[tuple[str, Callable[[], contextlib.AbstractContextManager], bool]] = [
        (f"tiling.DEVICE_BANDS = {{'{device.type}'}}", lambda: switched(tiling, "DEVICE_BANDS", {device.type}), True),
        (
            f"layers.CHANNELS_LAST_DEVICES = {{'{device.type}'}}",
            lambda: channels_last(model, device),
            False,
        ),
    ]
    if check.cuda:
        variants.append(
            ("torch.backends.cudnn.benchmark = True", lambda: switched(torch.backends.cudnn, "benchmark", True), False)
        )
    else:
        check.note("cudnn.benchmark: skipped: no CUDA")
    for label, switch, exact in variants:
        check.need(6 * per_run + 2, label)
        times: dict[str, list[float]] = {"default": [], "switch": []}
        with switch():
            on = Upscaler(model, device=device, precision="bf16", tile=tile)
            output = run(on)  # warm-up (and cuDNN's autotuning) outside the timings
        for i in range(2 * max(1, sizes.repeats // 2 + 1)):
            first = "default" if i % 2 == 0 else "switch"
            for which in (first, "switch" if first == "default" else "default"):
                if which == "default":
                    times["default"].append(timed(lambda: run(base), device))
                else:
                    with switch():
                        times["switch"].append(timed(lambda u=on: run(u), device))
        default_s, switch_s = statistics.median(times["default"]), statistics.median(times["switch"])
        equal = bool(np.array_equal(output, expected))
        diff = int(np.abs(output.astype(int) - expected.astype(int)).max())
        row = dict(
            switch=label,
            model=name,
            image=side,
            tile=tile,
            default_ms=1e3 * default_s,
            switch_ms=1e3 * switch_s,
            speedup=default_s / switch_s,
            uint8_identical=equal,
            max_level_diff=diff,
        )
        row["pass"] = equal if exact else diff <= 1
        check.row(**row)
    copies(check)


@contextlib.contextmanager
def channels_last(model: nn.Module, device: torch.device) -> Iterator[None]:
    with switched(layers, "CHANNELS_LAST_DEVICES", {device.type}):
        model.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            model.to(memory_format=torch.contiguous_format)


def copies(check: Check) -> None:
    """Host<->device copy rates of one batch of tiles (input) and its output, pageable vs pinned."""
    if not check.cuda:
        check.note("copies: skipped: no CUDA")
        return
    device, tile = check.device, check.sizes.e2e_tile
    batch = 4
    for what, shape, dtype, direction in (
        ("input tiles, float32", (batch, 3, tile, tile), torch.float32, "h2d"),
        ("output tiles, float32", (batch, 3, 4 * tile, 4 * tile), torch.float32, "d2h"),
        ("output tiles, uint8", (batch, 3, 4 * tile, 4 * tile), torch.uint8, "d2h"),
    ):
        host = torch.zeros(shape, dtype=dtype)
        pinned = host.pin_memory()
        on_device = torch.zeros(shape, dtype=dtype, device=device)
        row: dict[str, Any] = dict(copy=what, direction=direction, mib=host.numel() * host.element_size() / MIB)
        for label, buffer in (("pageable", host), ("pinned", pinned)):
            source, target = (buffer, on_device) if direction == "h2d" else (on_device, buffer)
            seconds = min(timed(lambda s=source, t=target: t.copy_(s, non_blocking=True), device) for _ in range(5))
            row[f"{label}_ms"] = 1e3 * seconds
            row[f"{label}_gb_s"] = host.numel() * host.element_size() / seconds / 1e9
        check.row(**row)


def section_attention(check: Check) -> None:
    """One attention call at HAT-L's shapes for a 512^2 input (bf16): which SDPA kernels take our
    call (head dim padded to 8 on CUDA, bias + mask as an additive 4-D mask), and how fast each is."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = check.device
    repeats = 10 if check.cuda else 2
    backends = ["EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "FLASH_ATTENTION", "MATH"]
    for case, nq, nk in attention_cases(check):
        q, k, v, bias, reference = attention_inputs(check, nq, nk)
        windows, heads, _, dim = q.shape
        row: dict[str, Any] = dict(case=case, shape=f"{windows}x{heads}x{nq}x{nk}, d={dim}", dtype="bf16")
        gflop = 4 * windows * heads * nq * nk * dim / 1e9
        with torch.inference_mode():
            default = functools.partial(layers.attend, q, k, v, bias[None], True)
            row["sdpa_ms"] = 1e3 * min(timed(default, device) for _ in range(repeats))
            row["sdpa_err"] = max_err(default().float(), reference)
            row["sdpa_tflops"] = gflop / row["sdpa_ms"]
            for backend in backends:
                if not hasattr(SDPBackend, backend):
                    continue
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        default()
                        row[f"{backend.lower()}_ms"] = 1e3 * min(timed(default, device) for _ in range(repeats))
                except RuntimeError as exc:
                    row[f"{backend.lower()}_ms"] = "no: " + str(exc).splitlines()[0][:60]
        check.row(**row)
        del q, k, v, bias, reference
        release(device)


def attention_inputs(check: Check, nq: int, nk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """q, k, v, bias (bf16) of one attention call at HAT-L's 512^2 shapes, and its fp32 result."""
    windows, heads, dim = ((512 // 16) ** 2, 6, 30) if check.cuda else (4, 3, 10)
    torch.manual_seed(0)
    device, dtype = check.device, torch.bfloat16
    q = torch.randn(windows, heads, nq, dim, device=device, dtype=dtype)
    k, v = (torch.randn(windows, heads, nk, dim, device=device, dtype=dtype) for _ in range(2))
    bias = torch.randn(heads, nq, nk, device=device).to(dtype)
    scores = (q.float() * dim**-0.5) @ k.float().transpose(-2, -1) + bias.float()
    return q, k, v, bias, scores.softmax(-1) @ v.float()


def attention_cases(check: Check) -> tuple[tuple[str, int, int], ...]:
    if check.cuda:
        return (("window attention", 256, 256), ("OCAB", 256, 576))
    return (("window attention", 64, 64), ("OCAB", 64, 144))


def section_flex(check: Check) -> None:
    """FlexAttention (compiled on CUDA) with the bias as a score_mod, on the calls of ``attention``."""
    repeats = 10 if check.cuda else 2
    if not check.cuda:
        check.note("smoke: eager flex_attention (its reference path); compiled flex needs inductor")
    for case, nq, nk in attention_cases(check):
        q, k, v, bias, reference = attention_inputs(check, nq, nk)
        row: dict[str, Any] = dict(case=case, shape=f"{'x'.join(map(str, q.shape[:3]))}x{nk}, d={q.shape[-1]}")
        with torch.inference_mode():
            sdpa = functools.partial(layers.attend, q, k, v, bias[None], True)
            row["sdpa_ms"] = 1e3 * min(timed(sdpa, check.device) for _ in range(repeats))
            flex_row(check, row, q, k, v, bias, reference, repeats)
        check.row(**row)
        del q, k, v, bias, reference
        release(check.device)


def flex_row(
    check: Check, row: dict[str, Any], q: Tensor, k: Tensor, v: Tensor, bias: Tensor, reference: Tensor, repeats: int
) -> None:
    """FlexAttention on the same call: the bias added by a score_mod, head dim padded to 32."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        row["flex"] = "not in this torch"
        return
    check.need(60.0 if check.cuda else 5.0, "flex_attention")
    dim = q.shape[-1]
    pad = -dim % 16 if dim < 16 else (1 << (dim - 1).bit_length()) - dim  # a power of two, >= 16
    qp, kp, vp = (F.pad(t, (0, pad)) for t in (q, k, v))

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + bias[h, q_idx, kv_idx]

    flex = torch.compile(flex_attention) if check.cuda else flex_attention  # eager flex on CPU: the reference path

    def run() -> Tensor:
        return flex(qp, kp, vp, score_mod=score_mod, scale=dim**-0.5)[..., :dim]

    with warnings_off():
        start = time.perf_counter()
        out = run()
        sync(check.device)
        row["flex_first_call_s"] = time.perf_counter() - start
        row["flex_ms"] = 1e3 * min(timed(run, check.device) for _ in range(repeats))
    row["flex_err"] = max_err(out.float(), reference)
    row["flex_vs_sdpa"] = row["sdpa_ms"] / row["flex_ms"]


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def section_compile(check: Check) -> None:
    """``Upscaler(compile=True)``: a whole image (compile time, speed vs eager), then tiles in
    batches whose last, smaller chunk reuses the full chunk's graph (one graph added)."""
    sizes, device = check.sizes, check.device
    if check.args.smoke:
        check.note("smoke: torch.compile backend 'aot_eager' (inductor's C++ build takes minutes on a CPU)")
    estimate = {"hat-s": 120.0, "hat-l": 240.0} if check.cuda else {}
    for name in ("hat-s",) if check.args.smoke else ("hat-s", "hat-l"):
        config = sizes.models[name]
        check.need(estimate.get(name, 20.0), f"compile {name}")
        model = random_hat(config).to(device)
        side = sizes.compile_side
        array = sample_image(side, side, seed=10)
        eager = Upscaler(model, device=device, precision="bf16", tile=0)
        compiled = Upscaler(model, device=device, precision="bf16", tile=0, compile=True)
        start = time.perf_counter()
        compiled.upscale_array(array)
        first = time.perf_counter() - start
        times = alternate(
            {
                "eager": functools.partial(eager.upscale_array, array),
                "compiled": functools.partial(compiled.upscale_array, array),
            },
            device,
            sizes.repeats,
        )
        flops = gflop(config, side, side) * 1e9
        row = dict(
            model=name,
            what=f"whole {side}x{side}, uint8 path",
            first_call_s=first,
            graphs=len(compiled.runner.compiled_shapes),
            eager_ms=1e3 * times["eager"],
            compiled_ms=1e3 * times["compiled"],
            speedup=times["eager"] / times["compiled"],
        )
        row.update(peak_share(check, flops / times["compiled"], "bf16"))
        check.row(**row)

        check.need(1.5 * first + 5, f"compile {name}, tiles")
        height, width = sizes.correctness_hw
        x = to_tensor(sample_image(height, width, seed=9))[None]
        columns = len(make_plan(height, width, 4, config.window_size, sizes.tile, sizes.overlap).xs)
        limit = max(1, columns - 1)
        chunks, left = [], columns
        while left:  # the engine's balanced chunks of a grid row
            chunks.append(-(-left // -(-left // limit)))
            left -= chunks[-1]
        for upscaler in (eager, compiled):
            upscaler.tile, upscaler.tile_overlap, upscaler.tile_batch = sizes.tile, sizes.overlap, limit
        expected = eager.upscale_tensor(x)
        before = compiled.runner.compiled_shapes
        start = time.perf_counter()
        out = compiled.upscale_tensor(x)
        first = time.perf_counter() - start
        added = sorted(compiled.runner.compiled_shapes - before)
        check.row(
            model=name,
            what=f"tiled {sizes.tile}, {columns} tiles per row in chunks of {'+'.join(map(str, chunks))}",
            first_call_s=first,
            graphs=len(added),
            shapes=[list(s) for s in added],
            psnr_vs_eager_db=psnr(out, expected),
            max_abs_err_vs_eager=max_err(out, expected),
            non_finite=non_finite(out),
            **{"pass": len(added) == 1 and psnr(out, expected) >= PSNR_GOAL and non_finite(out) == 0},
        )
        release(device)


SECTIONS: dict[str, Callable[[Check], None]] = {
    "environment": section_environment,
    "fixtures": section_fixtures,
    "correctness": section_correctness,
    "guard": section_guard,
    "rcan": section_rcan,
    "lam": section_lam,
    "speed": section_speed,
    "memory": section_memory,
    "oom": section_oom,
    "switches": section_switches,
    "attention": section_attention,
    "compile": section_compile,
    "flex": section_flex,
}


# --------------------------------------------------------------------------- report


def targets(check: Check) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets, from the rows (on a GPU run only)."""
    if not check.cuda:
        return [(t, m, "n/a: not a GPU run" if v != "n/a" else v) for t, m, v in _targets(check)]
    return _targets(check)


def _targets(check: Check) -> list[tuple[str, str, str]]:
    rows = {name: section.get("rows", []) for name, section in check.data["sections"].items()}
    result = []

    def speed(model: str, size: int, dtype: str) -> dict | None:
        key = (model, size, dtype)
        matches = (r for r in rows.get("speed", []) if "path" not in r)
        return next((r for r in matches if (r.get("model"), r.get("size"), r.get("dtype")) == key), None)

    big = max(check.sizes.speed)
    for dtype, goal in (("fp32", 3.0), ("bf16", 1.5)):
        r = speed("hat-l", big, dtype)
        got = r.get("speedup") if r else None
        result.append(
            (
                f"HAT-L x4 {big}^2 {dtype}: >= {goal}x spandrel's throughput",
                "n/a" if got is None else f"{got:.2f}x",
                "n/a" if got is None else ("met" if got >= goal else "NOT met"),
            )
        )
    tiled = next((r for r in rows.get("speed", []) if r.get("path") and r.get("size") == check.sizes.e2e_tiled), None)
    share = tiled.get("pct_bf16_spec") if tiled else None
    result.append(
        (
            f"HAT-L x4 bf16 in {check.sizes.e2e_tile}^2 tiles: >= 25% of the bf16 dense peak",
            "n/a" if share is None else f"{share:.1f}%",
            "n/a" if share is None else ("met" if share >= 25 else "NOT met"),
        )
    )
    half = [r for name in ("fixtures", "correctness", "rcan") for r in rows.get(name, []) if r.get("dtype") == "bf16"]
    worst = min((r["psnr_db"] for r in half if isinstance(r.get("psnr_db"), float)), default=None)
    result.append(
        (
            f"bf16 output >= {PSNR_GOAL:g} dB PSNR against fp32",
            "n/a" if worst is None else f"worst {worst:.1f} dB",
            "n/a" if worst is None else ("met" if worst >= PSNR_GOAL else "NOT met"),
        )
    )
    checked = [r for section in rows.values() for r in section if "non_finite" in r]
    bad = sum(1 for r in checked if r["non_finite"])
    result.append(
        ("no non-finite output in any precision", f"{bad} of {len(checked)} outputs", "met" if not bad else "NOT met")
    )
    mem = [r for r in rows.get("memory", []) if "peak_over_predicted" in r]
    if mem:
        inside = sum(1 for r in mem if r["within_15pct"])
        above = sum(1 for r in mem if r["peak_over_predicted"] > 1)
        verdict = "met" if above == 0 and inside == len(mem) else "NOT met"
        measured = f"{inside} of {len(mem)} within 15%, {above} above"
    else:
        measured, verdict = "n/a", "n/a"
    result.append(("memory model: peak within 15% of prediction, never above", measured, verdict))
    return result


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}"
        return f"{value:.1e}"
    if isinstance(value, list):
        return " ".join(fmt(v) for v in value)
    return str(value).replace("|", "/")


def markdown(check: Check) -> str:
    meta, env = check.data["meta"], check.data["environment"]
    lines = [
        f"# gpu_check ({meta['mode']}, {meta['device']}): {meta['status']}, {meta.get('elapsed_s', 0):.0f} s "
        f"of a {meta['budget_s']:.0f} s budget",
        "",
    ]
    if env:
        lines += ["| environment | |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in env.items()]
        lines.append("")
    if meta["status"] != "running" and check.data["sections"]:
        lines += ["## Targets (issue 18)", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(check)]
        lines.append("")
    for name, section in check.data["sections"].items():
        if name == "environment":
            continue
        header = f"## {name}: {section['status']}"
        if "seconds" in section:
            header += f" ({section['seconds']:.0f} s)"
        lines += [header, ""]
        lines += [f"- {note}" for note in section["notes"]]
        if section.get("error"):
            lines += ["", "```", section["error"].rstrip(), "```"]
        rows = section["rows"]
        if rows:
            columns: list[str] = []
            for row in rows:
                columns += [k for k in row if k not in columns]
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny networks and sizes: the same code paths")
    parser.add_argument("--budget-s", type=float, default=None, help="hard wall-clock budget (300 on GPU, 120 smoke)")
    parser.add_argument("--device", default=None, help="cuda (default with --smoke off) or cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list, in this order: %(default)s")
    parser.add_argument("--no-spandrel", action="store_true", help="skip the spandrel columns")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 rows (off: IEEE fp32)")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    if args.budget_s is None:
        args.budget_s = 120.0 if args.smoke else 300.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --smoke for the CPU run", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # tiny networks: threads cost more than they give on a busy CPU
        # inductor compiles C++ for minutes on a CPU; aot_eager traces the same graphs.
        torch.compile = functools.partial(torch.compile, backend="aot_eager")  # type: ignore[assignment]
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    check = Check(args.out, args, SMOKE if args.smoke else GPU, device)
    watchdog(check, grace=max(20.0, 0.1 * args.budget_s))
    print(f"# gpu_check: {check.data['meta']['mode']} on {device}, budget {args.budget_s:.0f} s -> {args.out}")
    for name in SECTIONS:
        check.section = name
        section = check.current()
        if name not in args.sections:
            section["status"] = "skipped: not selected"
            continue
        started = time.monotonic()
        print(f"# section {name} ({check.elapsed():.0f} s elapsed)", flush=True)
        try:
            check.need(3.0, f"section {name}")
            SECTIONS[name](check)
            section["status"] = "ok"
        except Skip as exc:
            section["status"] = f"skipped: {exc}"
        except Exception as exc:
            section["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            section["error"] = "".join(traceback.format_exception(exc)[-12:])
            print(section["error"], file=sys.stderr, flush=True)
        finally:
            section["seconds"] = round(time.monotonic() - started, 1)
            with contextlib.suppress(Exception):
                release(device)
            check.flush()
    failed = check.failed_rows()
    broken = [n for n, s in check.data["sections"].items() if s["status"].startswith("failed")]
    with check.lock:
        check.data["meta"]["status"] = "finished" if not (failed or broken) else "finished with failures"
        check.data["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        check.data["meta"]["targets"] = [dict(target=t, measured=m, verdict=v) for t, m, v in targets(check)]
        check.flush()
        finished.set()
    print(markdown(check), flush=True)
    for line in failed:
        print(f"# FAILED {line}", file=sys.stderr)
    return 1 if failed or broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
