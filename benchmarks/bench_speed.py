"""Inference speed of our HAT against spandrel's (the implementation chaiNNer uses), same weights.

For HAT-S, HAT and HAT-L x4 with one set of random weights (spandrel's, loaded into ours by
their official names), both networks run on the same inputs in one process, alternating
(ours, spandrel, spandrel, ours, ...) after warm-up, so load from other processes hits both
alike. Printed per model, size and precision:

- input megapixels per second (median wall time) for each, and the ratio ours / spandrel;
  on CPU also the ratio of median process CPU time, which a busy machine disturbs far less;
- the largest output difference (fp32 must agree to 1e-4: exit status 1 otherwise);
- peak memory of one forward: CPU, the RSS high-water mark above the pre-forward RSS, measured
  in a fresh subprocess per network (``ru_maxrss``; tracemalloc does not see torch's allocator);
  GPU, ``torch.cuda.max_memory_allocated`` above what was allocated before the forward;
- the fraction of the device's peak FLOP rate, from the network's multiply-adds counted
  analytically (``--check-flops`` verifies the count with FlopCounterMode) and a peak measured
  with a large matmul of the same precision.

Examples::

    python benchmarks/bench_speed.py --models hat-s --sizes 64 --repeats 3          # quick
    python benchmarks/bench_speed.py --threads 1                                    # CPU table
    python benchmarks/bench_speed.py --device cuda --sizes 64,128,256,512 --dtypes fp32,bf16,fp16

Needs spandrel (benchmark only): ``pip install --no-deps spandrel``, or its wheel in ``.whl/``
(see ``hat_models.py``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hat_models import DTYPES, MODELS, network_macs, our_config  # noqa: E402
from hat_models import build_pair as build_config_pair  # noqa: E402

from hat_cli.model import HAT, layers  # noqa: E402
from hat_cli.model.compiled import CompiledNetwork  # noqa: E402

FP32_TOLERANCE = 1e-4


def build_pair(name: str, seed: int = 0) -> tuple[HAT, nn.Module]:
    """(ours, spandrel) for an official x4 configuration, with spandrel's random weights in both."""
    return build_config_pair(our_config(name), seed)


# --------------------------------------------------------------------------- FLOPs


def check_flops(name: str) -> None:
    """Compare the analytic count with FlopCounterMode on the plain-math path (whose matmuls it sees)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = HAT(our_config(name)).eval()
    model.set_fused_attention(False)
    x = torch.rand(1, 3, 32, 48)
    onednn, layers.ONEDNN_LINEAR = layers.ONEDNN_LINEAR, False  # FlopCounterMode does not see oneDNN's op
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        layers.ONEDNN_LINEAR = onednn
    counted, analytic = counter.get_total_flops(), 2 * network_macs(model.config, 32, 48)
    print(f"# flops check {name} 32x48: FlopCounterMode {counted / 1e9:.3f} GFLOP, analytic {analytic / 1e9:.3f}")
    if abs(counted - analytic) > 1e-3 * counted:
        raise SystemExit("analytic FLOP count disagrees with FlopCounterMode")


def peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> tuple[float, float]:
    """Best (wall, process-CPU-time) FLOP/s of a large square matmul: the device's practical peak
    in this precision. On CPU both BLAS (``a @ b``) and oneDNN GEMMs are tried and the faster
    counts: on AMD CPUs MKL takes AVX2 kernels and reaches about half of what oneDNN's AVX-512
    ones do. On a shared CPU the CPU-time rate is the stable one (what a core does while it runs
    us); FLOP fractions on CPU are taken on that clock for both networks."""
    size, inner = (4096, 10) if device.type == "cuda" else (1536, 1)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    kernels = [lambda: a @ b]
    if device.type == "cpu" and layers.ONEDNN_LINEAR:
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    wall, cpu = math.inf, math.inf
    for kernel in kernels:
        for i in range(repeats + 1):
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                kernel()
            sync(device)
            if i:  # the first run is warm-up
                wall = min(wall, (time.perf_counter() - start) / inner)
                cpu = min(cpu, (time.process_time() - start_cpu) / inner)
    return 2 * size**3 / wall, 2 * size**3 / cpu


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    model: str
    size: int
    dtype: str
    ours_s: float = 0.0
    spandrel_s: float = 0.0
    ours_cpu_s: float = 0.0
    spandrel_cpu_s: float = 0.0
    ours_times: list[float] = field(default_factory=list)
    spandrel_times: list[float] = field(default_factory=list)
    max_abs_err: float = 0.0
    gflop: float = 0.0
    ours_mem_mb: float | None = None
    spandrel_mem_mb: float | None = None
    compiled_s: float | None = None
    compile_time_s: float | None = None
    compiled_err: float | None = None

    @property
    def megapixels(self) -> float:
        return self.size * self.size / 1e6


def precision_context(device: torch.device, dtype: torch.dtype, cast: str):
    if dtype == torch.float32 or cast == "model":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def time_pair(
    runners: dict[str, nn.Module],
    x: torch.Tensor,
    device: torch.device,
    context,
    warmup: int,
    repeats: int,
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds per runner; the order alternates every round (ABBA...).
    Each runner has already run once on ``x`` (the output check), which is its warm-up."""
    names = list(runners)
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in names}
    with torch.inference_mode(), context:
        for _ in range(warmup):
            for name in names:
                runners[name](x)
        for i in range(repeats):
            for name in names if i % 2 == 0 else names[::-1]:
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                runners[name](x)
                sync(device)
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return times


def gpu_peak_memory(model: nn.Module, x: torch.Tensor, device: torch.device, context) -> float:
    """MB allocated at the peak of one forward, above what was allocated before it."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), context:
        model(x)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def cpu_peak_memory(name: str, impl: str, size: int, threads: int) -> float:
    """MB of RSS high-water mark above the pre-forward RSS, for one forward in a fresh process."""
    command = [sys.executable, __file__, "--memory-child", name, impl, str(size), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def memory_child(name: str, impl: str, size: int) -> None:
    ours, spandrel = build_pair(name)
    model = ours if impl == "ours" else spandrel
    del ours, spandrel
    x = torch.rand(1, 3, size, size)
    # A first, small forward pages in library code and kernels' one-time buffers (~300 MB here,
    # the same for both networks); the free heap it leaves is handed back so it cannot hide the peak.
    with torch.inference_mode():
        model(x[..., :32, :32])
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_before = proc_status_bytes("VmRSS")
    # "5" resets this process's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0).
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    with torch.inference_mode():
        model(x)
    peak = proc_status_bytes("VmHWM")
    print(json.dumps({"peak_mb": max(0, peak - rss_before) / 2**20}))


def proc_status_bytes(key: str) -> int:
    """VmRSS / VmHWM of this process. Not ru_maxrss: Linux carries that over fork+exec, so a
    child of this (large) benchmark process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # non-Linux fallback


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    rows: list[Row] = []
    peaks: dict[str, float] = {}
    for dtype_name in args.dtypes:
        wall, cpu = peak_flops(device, DTYPES[dtype_name])
        peaks[dtype_name] = cpu if device.type == "cpu" else wall
        clock = f"; {cpu / 1e9:.1f} GFLOP/s per CPU-second (used for % peak)" if device.type == "cpu" else ""
        print(f"# peak {dtype_name} matmul on {device}: {wall / 1e9:.1f} GFLOP/s wall{clock}", flush=True)
    for name in args.models:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            in_dtype = dtype if args.cast == "model" else torch.float32
            ours, spandrel = (m.to(device, in_dtype) for m in build_pair(name))  # fresh fp32 weights per dtype
            context = precision_context(device, dtype, args.cast)
            runners: dict[str, nn.Module] = {"ours": ours, "spandrel": spandrel}
            compiled = CompiledNetwork(ours) if args.compile else None
            for size in args.sizes:
                row = Row(name, size, dtype_name, gflop=2 * network_macs(ours.config, size, size) / 1e9)
                torch.manual_seed(size)
                x = torch.rand(1, 3, size, size, device=device).to(in_dtype)
                with torch.inference_mode(), context:
                    row.max_abs_err = (ours(x).float() - spandrel(x).float()).abs().max().item()
                if compiled is not None:
                    start = time.perf_counter()
                    with torch.inference_mode(), context:
                        out = compiled(x)
                        sync(device)
                        row.compile_time_s = time.perf_counter() - start
                        row.compiled_err = (out.float() - ours(x).float()).abs().max().item()
                    runners["compiled"] = compiled
                times = time_pair(runners, x, device, context, args.warmup, args.repeats)
                row.ours_times, row.spandrel_times = times["ours"][0], times["spandrel"][0]
                row.ours_s, row.spandrel_s = (statistics.median(times[k][0]) for k in ("ours", "spandrel"))
                row.ours_cpu_s, row.spandrel_cpu_s = (statistics.median(times[k][1]) for k in ("ours", "spandrel"))
                if compiled is not None:
                    row.compiled_s = statistics.median(times["compiled"][0])
                if args.memory and device.type == "cuda":
                    row.ours_mem_mb = gpu_peak_memory(ours, x, device, context)
                    row.spandrel_mem_mb = gpu_peak_memory(spandrel, x, device, context)
                elif args.memory and dtype == torch.float32:
                    row.ours_mem_mb = cpu_peak_memory(name, "ours", size, args.threads)
                    row.spandrel_mem_mb = cpu_peak_memory(name, "spandrel", size, args.threads)
                rows.append(row)
                print_row(row, peaks[dtype_name], device, header=len(rows) == 1)
            del ours, spandrel, runners, compiled
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def print_row(row: Row, peak: float, device: torch.device, header: bool) -> None:
    if header:
        cols = "| model | size | dtype | ours MP/s | spandrel MP/s | ratio | CPU-time ratio | max abs err | peak MB ours / spandrel | % peak FLOPs ours / spandrel |"
        if row.compiled_s is not None:
            cols += " compiled MP/s (compile s, err vs eager) |"
        print(cols)
        print("|" + "---|" * (cols.count("|") - 1))
    mem = "n/a" if row.ours_mem_mb is None else f"{row.ours_mem_mb:.0f} / {row.spandrel_mem_mb:.0f}"
    cpu_ratio = f"{row.spandrel_cpu_s / row.ours_cpu_s:.2f}x" if device.type == "cpu" else "n/a"
    ours_s, spandrel_s = (row.ours_cpu_s, row.spandrel_cpu_s) if device.type == "cpu" else (row.ours_s, row.spandrel_s)
    flops = f"{100 * row.gflop * 1e9 / ours_s / peak:.0f}% / {100 * row.gflop * 1e9 / spandrel_s / peak:.0f}%"
    line = (
        f"| {row.model} | {row.size}x{row.size} | {row.dtype} | {row.megapixels / row.ours_s:.3g} | "
        f"{row.megapixels / row.spandrel_s:.3g} | {row.spandrel_s / row.ours_s:.2f}x | {cpu_ratio} | "
        f"{row.max_abs_err:.1e} | {mem} | {flops} |"
    )
    if row.compiled_s is not None:
        line += f" {row.megapixels / row.compiled_s:.3g} ({row.compile_time_s:.0f}, err {row.compiled_err:.0e}) |"
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="hat-s,hat,hat-l", help="comma list of hat-s, hat, hat-l")
    parser.add_argument("--sizes", default=None, help="comma list of square input sides (CPU 64,128; GPU up to 512)")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, bf16, fp16 (CPU fp32; GPU all three)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each network (median)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed runs of each network after the first (output check) run"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--cast",
        choices=("autocast", "model"),
        default="autocast",
        help="bf16/fp16 via autocast (as hat_cli.api does) or by casting weights and input",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 matmuls/convs (off: true fp32)")
    parser.add_argument("--compile", action="store_true", help="also time ours through CompiledNetwork (torch.compile)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--check-flops", action="store_true", help="verify the analytic FLOP count first")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.models = args.models.split(",")
    args.sizes = [int(s) for s in (args.sizes or ("64,128,256,512" if gpu else "64,128")).split(",")]
    args.dtypes = (args.dtypes or ("fp32,bf16,fp16" if gpu else "fp32")).split(",")
    unknown = [m for m in args.models if m not in MODELS] + [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown model/dtype: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        name, impl, size = args.memory_child
        memory_child(name, impl, int(size))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    print(
        f"# torch {torch.__version__}, device {args.device}, threads {args.threads}, cast {args.cast}, tf32 {args.tf32}"
    )
    if args.device.startswith("cuda"):
        print(f"# {torch.cuda.get_device_name(torch.device(args.device))}")
    if args.check_flops:
        for name in args.models:
            check_flops(name)
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if r.dtype == "fp32" and r.max_abs_err > FP32_TOLERANCE]
    for r in bad:
        print(f"# FAIL {r.model} {r.size}: fp32 outputs differ by {r.max_abs_err:.2e} > {FP32_TOLERANCE}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
