"""Tiled inference: images of any size in bounded memory, without visible seams.

One image goes through three steps:

1. **Plan** (:func:`make_plan`). The image is reflect-padded bottom/right to a window multiple
   once, virtually, exactly as the untiled network pads it (the official recipe), and cropped
   back at the end: border pixels see the same context tiled or not, and images smaller than a
   window just work. Tile side and overlap are rounded to window multiples, so every tile starts
   on the untiled network's window grid and needs no padding of its own. Tiles sit on a regular
   grid; the last row/column is shifted inward (never padded) so every tile has the same size and
   tiles can be batched. An axis no longer than a tile gets a single tile.
2. **Weights** (:func:`axis_weights`). Separable 1-D weights per grid row and column, in output
   pixels. Pixels next to a tile's own interior border saw a truncated context, so a *margin*
   there (15/32 of the overlap by default) gets weight zero; between the margins a raised-cosine
   ramp hands over from one tile to the next. At the image border a tile keeps full weight (the
   untiled network sees the same border). The 1-D weights are normalised to sum to one at every pixel, hence so
   are their 2-D products: the output is a convex combination of tile outputs.
3. **Run** (:class:`TileEngine`). Tiles are processed one grid row (a *band*) at a time. Float
   accumulators exist only for the current band; rows that no later tile touches are handed to a
   sink (quantised into a preallocated uint8/uint16 array, or copied into a float canvas). Peak
   memory is the output plus one band, not a float32 copy of the whole output. The band lives in
   host memory, or on the device for device types in :data:`DEVICE_BANDS` (then blending and
   quantisation run on the device and only finished integer rows cross to the host).

Out-of-memory errors (CUDA, MPS, CPU allocator) halve the tile and retry it as a tiled image of
its own; nothing from a failed forward is ever pasted. In fp16/bf16 every tile is checked for
non-finite values and recomputed in fp32 when needed (HAT overflows in fp16).

This module is library code: torch and numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .errors import DeviceOutOfMemory, NonFiniteOutput
from .model.contract import Network
from .model.padding import reflect_pad_to_multiple, run_padded
from .pixels import quantize, to_tensor

Blend = Literal["feather", "crop"]
Progress = Callable[[int, int], None]  # (tiles done, tiles total)
Reader = Callable[[int, int, int, int], Tensor]  # (y0, y1, x0, x1) -> (C, y1-y0, x1-x0) float32 in [0, 1]
Writer = Callable[[int, Tensor], None]  # (first output row, (C, rows, out_width) float32 block, host or device)

MIN_DEFAULT_OVERLAP = 32  # input pixels; see default_overlap
MAX_AUTO_BATCH = 8  # tiles per forward on GPUs; more rarely helps and delays the first OOM signal

# Device types whose band accumulator lives on the device (blending, and quantisation in
# array_writer, run there; blocks are bit-identical to host bands: the same float32 products and
# sums). Off by default until measured on a GPU (benchmarks/gpu_check.py, "switches"): the band
# then takes device memory, which choose_tile counts against the device budget.
DEVICE_BANDS: set[str] = set()


def band_device(device: torch.device) -> torch.device:
    """Where the band accumulator of a run on ``device`` lives."""
    return device if device.type in DEVICE_BANDS else torch.device("cpu")


# --------------------------------------------------------------------------- planning


def round_tile(tile: int, window: int) -> int:
    """Round a tile side down to a window multiple (it is a memory limit), at least one window."""
    return max(window, tile // window * window)


def round_overlap(overlap: int, window: int, tile: int) -> int:
    """Round an overlap up to a window multiple (it buys quality), at most half the tile.

    Half the tile keeps the stride at least the overlap, so the blending ramps of one tile's two
    sides never meet and the raw weights already form a partition of unity.
    """
    overlap = -(-max(0, overlap) // window) * window
    return min(overlap, tile // 2 // window * window)


def default_overlap(window: int) -> int:
    """Default overlap in input pixels: two windows, and at least 32 pixels of shared context."""
    return max(2 * window, -(-MIN_DEFAULT_OVERLAP // window) * window)


def axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start of every tile along an axis: stride ``tile - overlap``, the last shifted inward.

    ``length <= tile`` gives one tile at 0 (it is padded, not shifted).
    """
    if length <= tile:
        return (0,)
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1
    return tuple(min(i * stride, length - tile) for i in range(count))


class AxisWeight(NamedTuple):
    """One tile's 1-D weight along an axis: nonzero only on output pixels ``[lo, hi)``."""

    lo: int
    hi: int
    weight: np.ndarray  # (hi - lo,) float32


def axis_weights(
    starts: Sequence[int],
    extent: int,
    length: int,
    scale: int,
    overlap: int,
    margin: float,
    blend: Blend = "feather",
) -> tuple[AxisWeight, ...]:
    """Normalised 1-D blending weights, in output pixels, for tiles ``[s, s + extent)`` (input pixels).

    For each pair of neighbours the hand-over happens around the centre of their actual overlap
    (the shifted last tile overlaps more than ``overlap``): ``feather`` ramps with a raised cosine
    of width ``(overlap - 2 * margin) * scale``, leaving at least ``margin * scale`` output pixels
    of zero weight next to each tile's interior border; ``crop`` cuts hard at the centre (the
    official tile recipe: each tile keeps its non-overlapping core).
    """
    size = length * scale
    pos = np.arange(size) + 0.5  # pixel centres
    weights = np.zeros((len(starts), size))
    for k, start in enumerate(starts):
        weights[k, start * scale : (start + extent) * scale] = 1.0
    ramp = 0 if blend == "crop" else max(0, overlap - 2 * margin) * scale
    for k in range(len(starts) - 1):
        lo, hi = starts[k + 1] * scale, (starts[k] + extent) * scale
        centre = (lo + hi) / 2
        width = min(ramp, hi - lo - 2 * margin * scale)
        if width <= 0:
            rise = (pos >= centre).astype(np.float64)
        else:
            t = np.clip((pos - centre + width / 2) / width, 0.0, 1.0)
            rise = 0.5 - 0.5 * np.cos(np.pi * t)
        weights[k + 1] *= rise
        weights[k] *= 1.0 - rise
    total = weights.sum(axis=0)
    if not np.all(total > 0):
        raise ValueError("tiles do not cover the axis: overlap too large for the tile size")
    weights /= total
    result = []
    for row in weights:
        nonzero = np.flatnonzero(row)
        lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
        result.append(AxisWeight(lo, hi, row[lo:hi].astype(np.float32)))
    return tuple(result)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one ``height x width`` image go (all sizes in input pixels).

    Tiles are laid over the image reflect-padded bottom/right to a window multiple
    (``padded_height x padded_width``), exactly as the untiled network pads it, so pixels at the
    image border see the same context tiled or not; the output is cropped back.
    """

    height: int
    width: int
    scale: int
    window: int
    tile_h: int  # every tile's input extent (the padded side when one tile covers an axis)
    tile_w: int
    overlap: int
    margin: float  # input pixels
    blend: Blend
    ys: tuple[int, ...]  # tile row starts
    xs: tuple[int, ...]  # tile column starts

    @property
    def tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def whole(self) -> bool:
        """One tile covers the image: the result is exactly the untiled network's."""
        return self.tiles == 1

    @property
    def padded_height(self) -> int:
        return -(-self.height // self.window) * self.window

    @property
    def padded_width(self) -> int:
        return -(-self.width // self.window) * self.window

    @cached_property
    def row_weights(self) -> tuple[AxisWeight, ...]:
        """Per tile row, over the padded height's output rows."""
        return axis_weights(self.ys, self.tile_h, self.padded_height, self.scale, self.overlap, self.margin, self.blend)

    @cached_property
    def col_weights(self) -> tuple[AxisWeight, ...]:
        """Per tile column, over the padded width's output columns."""
        return axis_weights(self.xs, self.tile_w, self.padded_width, self.scale, self.overlap, self.margin, self.blend)


def make_plan(
    height: int,
    width: int,
    scale: int,
    window: int,
    tile: int,
    overlap: int | None = None,
    margin: float | None = None,
    blend: Blend = "feather",
) -> TilePlan:
    """Plan tiles of side ``tile`` (0 = whole image) overlapping by ``overlap`` input pixels.

    ``margin`` (input pixels) is kept out of the blend on each side of an interior tile border;
    the feathered ramp runs over the rest of the overlap. The default margin is 15/32 of the
    overlap: the ramp spans the central sixteenth (2 input pixels of a 32-pixel overlap, 8 output
    pixels at x4). A tile's error against the untiled output falls by 5-10 dB per input pixel of
    context until it reaches the float noise floor, so a wide ramp mixes in too much of the worse
    tile; a narrow one still spreads the hard cut's step and averages the two tiles' independent
    errors where they are equal. Measured on three tiny HATs and overlaps of 8-32 pixels, ramps
    of 1/4 and 1/8 of the overlap sometimes lost to the hard cut, 1/16 never did
    (benchmarks/NOTES-tiling.md).
    """
    if height < 1 or width < 1:
        raise ValueError(f"empty image ({height}x{width})")
    if tile < 0:
        raise ValueError(f"tile must be >= 0 (0 = whole image), got {tile}")
    pad_h, pad_w = -(-height // window) * window, -(-width // window) * window
    if tile == 0 or (tile >= pad_h and tile >= pad_w):
        return TilePlan(height, width, scale, window, pad_h, pad_w, 0, 0, blend, (0,), (0,))
    tile = round_tile(tile, window)
    overlap = round_overlap(default_overlap(window) if overlap is None else overlap, window, tile)
    margin = 15 * overlap / 32 if margin is None else max(0.0, min(margin, overlap / 2))
    return TilePlan(
        height=height,
        width=width,
        scale=scale,
        window=window,
        tile_h=min(tile, pad_h),
        tile_w=min(tile, pad_w),
        overlap=overlap,
        margin=margin,
        blend=blend,
        ys=axis_starts(pad_h, tile, overlap),
        xs=axis_starts(pad_w, tile, overlap),
    )


def reflect_indices(length: int, window: int) -> np.ndarray:
    """Source index of every position of an axis reflect-padded to a window multiple, with the
    network's own padding rules (:func:`~hat_cli.model.padding.reflect_pad_to_multiple`)."""
    index = torch.arange(length, dtype=torch.float64).view(1, 1, length, 1)
    return reflect_pad_to_multiple(index, window)[0, 0, :, 0].long().numpy()


def padded_reader(read: Reader, height: int, width: int, window: int) -> Reader:
    """``read`` over the image reflect-padded to window multiples; only border tiles gather."""
    rows, cols = reflect_indices(height, window), reflect_indices(width, window)

    def read_padded(y0: int, y1: int, x0: int, x1: int) -> Tensor:
        if y1 <= height and x1 <= width:
            return read(y0, y1, x0, x1)
        r, c = rows[y0:y1], cols[x0:x1]
        r0, c0 = int(r.min()), int(c.min())
        block = read(r0, int(r.max()) + 1, c0, int(c.max()) + 1)
        return block[:, torch.from_numpy(r - r0)][:, :, torch.from_numpy(c - c0)]

    return read_padded


# --------------------------------------------------------------------------- memory model

# Share of free memory a tile may use: other processes share CPU RAM; CUDA memory is ours.
BUDGET_SHARE = {"cuda": 0.8, "cpu": 0.5, "mps": 0.5}


def available_ram() -> int:
    """Bytes of RAM available to a new allocation: MemAvailable, else free pages, else 4 GiB."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def free_device_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device``; CPU and MPS (unified memory) report system RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Blocks cached by PyTorch's allocator are free for our tensors too.
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return available_ram()


@dataclass(frozen=True)
class TileChoice:
    """The outcome of :func:`choose_tile`: what to run and why."""

    tile: int  # 0 = whole image
    batch: int
    estimate: int  # device bytes at this tile and batch: the forward (and the band, if on the device)
    budget: int  # bytes of device memory allowed
    reason: str


def choose_tile(
    model: Network,
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
    overlap: int | None = None,
    channels: int = 3,
    output_bytes: int = 0,
    batch: int | None = None,
    budget: int | None = None,
    host_budget: int | None = None,
) -> TileChoice:
    """The largest window-multiple tile whose forward fits in free memory (``--tile auto``).

    ``output_bytes``: the caller's final output buffer, which lives in host RAM alongside the band
    accumulator (``channels x tile*scale x width*scale`` float32). On CUDA the forward must fit the
    GPU budget and the band the host budget (the GPU budget with :data:`DEVICE_BANDS`); on CPU/MPS
    everything shares the host budget.
    ``batch=None`` batches as many tiles per forward as fit (CUDA only; 1 elsewhere).
    """
    window, scale = model.size_multiple, model.scale
    per_pixel = model.bytes_per_input_pixel(dtype)
    host_free = available_ram()
    host = int(host_free * BUDGET_SHARE["cpu"]) if host_budget is None else host_budget
    shared = device.type != "cuda"
    band_on_device = not shared and band_device(device) == device
    if budget is None:
        free = free_device_memory(device)
        budget = int(free * BUDGET_SHARE.get(device.type, 0.5))
    if shared:
        budget = min(budget, host)
    pad_h, pad_w = -(-height // window) * window, -(-width // window) * window

    def forward_bytes(tile: int) -> int:
        return int(per_pixel * min(tile, pad_h) * min(tile, pad_w))

    def band_bytes(tile: int) -> int:  # the band and the tile output copies, float32
        return 4 * channels * (min(tile, pad_h) * scale) * (pad_w * scale + 2 * min(tile, pad_w) * scale)

    def costs(tile: int) -> tuple[int, int]:
        """(device bytes, host bytes); on CPU/MPS both are the same memory."""
        if band_on_device:
            return forward_bytes(tile) + band_bytes(tile), output_bytes
        return forward_bytes(tile), band_bytes(tile) + output_bytes

    def fits(tile: int) -> bool:
        on_device, on_host = costs(tile)
        return on_device + on_host <= budget if shared else (on_device <= budget and on_host <= host)

    largest = max(pad_h, pad_w)
    tile = largest
    while tile > window and not fits(tile):
        tile -= window
    forward = forward_bytes(tile)
    device_band = band_bytes(tile) if band_on_device else 0
    where = "GPU" if device.type == "cuda" else "RAM"
    if not fits(tile):
        reason = f"nothing fits in {_gib(budget)} of free {where}: smallest tile, relying on OOM retries"
    elif tile >= largest:
        reason = f"whole image fits: ~{_gib(forward)} of {_gib(budget)} free {where}"
    else:
        reason = f"largest tile that fits: ~{_gib(forward)} of {_gib(budget)} free {where}"
    whole = tile >= pad_h and tile >= pad_w
    plan = make_plan(height, width, scale, window, 0 if whole else tile, overlap)
    if batch is None:
        batch = choose_batch(model, plan, device, dtype, budget - device_band)
    return TileChoice(0 if whole else tile, batch, forward * batch + device_band, budget, reason)


def choose_batch(
    model: Network,
    plan: TilePlan,
    device: torch.device,
    dtype: torch.dtype,
    budget: int | None = None,
) -> int:
    """Tiles per forward: 1 on CPU/MPS (no gain there); on CUDA as many tiles of one grid row as
    fit in ``budget`` (default: a share of free GPU memory), at most :data:`MAX_AUTO_BATCH`."""
    if device.type != "cuda" or len(plan.xs) == 1:
        return 1
    if budget is None:
        budget = int(free_device_memory(device) * BUDGET_SHARE["cuda"])
    pad = -(-plan.tile_h // plan.window) * plan.window * -(-plan.tile_w // plan.window) * plan.window
    forward = model.bytes_per_input_pixel(dtype) * pad
    return int(max(1, min(MAX_AUTO_BATCH, len(plan.xs), budget // max(forward, 1.0))))


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- running


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, MPS's and the CPU allocator's RuntimeErrors."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError since 2.5, same class
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class RunReport:
    """What one :meth:`TileEngine.run` had to do beyond the plan."""

    oom_retries: int = 0
    fp32_fallbacks: int = 0
    smallest_tile: int = 0  # tile side after out-of-memory halving (0: never halved)


@dataclass
class TileStats:
    """What one image's tiled run did (``hat upscale --verbose`` prints :meth:`describe`)."""

    height: int
    width: int
    tile: int  # 0 = whole image
    overlap: int
    grid: tuple[int, int]  # tile rows, tile columns
    batch: int
    device: str
    precision: str
    reason: str = ""
    report: RunReport = field(default_factory=RunReport)  # filled in by the run

    def describe(self) -> str:
        if self.tile == 0:
            layout = f"whole image ({self.width}x{self.height})"
        else:
            layout = (
                f"{self.grid[0]}x{self.grid[1]} tiles of {self.tile} px, overlap {self.overlap}, batch {self.batch}"
            )
        text = f"{layout} on {self.device} ({self.precision})"
        if self.reason:
            text += f"; {self.reason}"
        report = self.report
        if report.oom_retries:
            text += f"; {report.oom_retries} out-of-memory retries, "
            text += f"tile halved to {report.smallest_tile} px" if report.smallest_tile else "batch halved"
        if report.fp32_fallbacks:
            text += f"; {report.fp32_fallbacks} tile(s) recomputed in fp32 (non-finite values)"
        return text


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[object]:
    """Autocast to ``dtype`` (bfloat16/float16) on ``device``; nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back (after an out-of-memory error, before a retry)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class TileEngine:
    """Runs a :class:`TilePlan` through a :class:`~hat_cli.model.contract.Network`, band by band;
    survives out-of-memory errors and recomputes non-finite half-precision tiles in fp32.

    The engine is kept across images: a tile size learned from an out-of-memory error
    (``max_side``) stays in force, so later tiles are split up front instead of failing again.
    """

    def __init__(self, model: Network, device: torch.device, dtype: torch.dtype, batch: int = 1) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch = max(1, batch)
        # Learned from out-of-memory errors and kept for later images.
        self.max_batch: int | None = None
        self.max_side: int | None = None

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def window(self) -> int:
        return self.model.size_multiple

    @property
    def batch_limit(self) -> int:
        return self.batch if self.max_batch is None else min(self.batch, self.max_batch)

    @torch.inference_mode()
    def run(self, plan: TilePlan, read: Reader, write: Writer, progress: Progress | None = None) -> RunReport:
        """Upscale the image behind ``read`` tile by tile, handing finished rows to ``write``.

        ``read(y0, y1, x0, x1)`` serves (C, h, w) float32 crops of the ``height x width`` image.
        ``write(row, block)`` receives (C, rows, width*scale) float32 blocks in order, top to
        bottom; ``block`` is reused afterwards, so the writer must copy what it keeps.
        """
        report = RunReport()
        self._run(plan, read, write, progress, report)
        report.smallest_tile = self.max_side or 0
        return report

    def _run(self, plan: TilePlan, read: Reader, write: Writer, progress: Progress | None, report: RunReport) -> None:
        band = _Band(plan, write, band_device(self.device))
        read = padded_reader(read, plan.height, plan.width, plan.window)
        done = 0
        for i, y in enumerate(plan.ys):
            pending = list(enumerate(plan.xs))
            while pending:
                # Balanced chunks (5 tiles at batch 4: 3 + 2, not 4 + 1): as many forwards, and
                # fewer distinct batch shapes for a compiled network to see.
                size = -(-len(pending) // -(-len(pending) // self.batch_limit))
                chunk, pending = pending[:size], pending[size:]
                tiles = torch.stack([read(y, y + plan.tile_h, x, x + plan.tile_w) for _, x in chunk])
                out = self.infer(tiles, plan, report)  # (B, C, tile_h*s, tile_w*s)
                for k, (j, x) in enumerate(chunk):
                    band.add(out[k], i, j, y, x)
                    done += 1
                    if progress is not None:
                        progress(done, plan.tiles)
            band.finish_row(i)

    def infer(self, tiles: Tensor, plan: TilePlan, report: RunReport) -> Tensor:
        """(B, C, h, w) float32 -> (B, C, s*h, s*w) float32 (any device), splitting on out-of-memory.

        A failed forward leaves nothing behind: its result is never returned, only recomputed with
        half the batch, then with tiles of half the side (each run as a tiled image of its own).
        """
        count, _, height, width = tiles.shape
        if self.max_side is not None and max(height, width) > self.max_side:
            return torch.cat([self._subtiled(tile, plan, report) for tile in tiles])
        if count > self.batch_limit:
            # Parts before an out-of-memory error come from the device, parts after it may be
            # sub-tiled canvases: gather them in one place.
            parts = [self.infer(part, plan, report) for part in tiles.split(self.batch_limit)]
            return torch.cat([part.to(self.device) for part in parts])
        try:
            return self.forward(tiles, report)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Retried outside the except block, so the failed attempt's tensors (kept alive by the
        # traceback) are already freed.
        report.oom_retries += 1
        release_cached_memory(self.device)
        self._shrink(count, max(height, width))
        return self.infer(tiles, plan, report)

    def _shrink(self, count: int, side: int) -> None:
        """After an out-of-memory error: halve the batch, else the tile side (down to one window)."""
        if count > 1:
            self.max_batch = max(1, count // 2)
            return
        if side <= self.window:
            raise DeviceOutOfMemory(
                f"out of memory on {self.device} even for a {self.window}x{self.window} tile: "
                "free memory, or use --device cpu"
            )
        self.max_side = max(self.window, (side // 2) // self.window * self.window)

    def _subtiled(self, tile: Tensor, plan: TilePlan, report: RunReport) -> Tensor:
        """(C, h, w) -> (1, C, s*h, s*w) on the band's device: one tile upscaled as an image of smaller tiles."""
        assert self.max_side is not None
        channels, height, width = tile.shape
        overlap = None if plan.whole else plan.overlap  # an untiled plan has none: use the default
        sub = make_plan(height, width, plan.scale, plan.window, self.max_side, overlap, None, plan.blend)
        canvas = torch.empty(channels, height * plan.scale, width * plan.scale, device=band_device(self.device))

        def write(row: int, block: Tensor) -> None:
            canvas[:, row : row + block.shape[1]] = block

        self._run(sub, lambda y0, y1, x0, x1: tile[:, y0:y1, x0:x1], write, None, report)
        return canvas[None]

    def forward(self, tiles: Tensor, report: RunReport | None = None) -> Tensor:
        """(B, C, h, w) in 0..1 -> (B, C, s*h, s*w) float32 on the device: one padded forward.

        In half precision, tiles with non-finite outputs are recomputed in fp32; a non-finite value
        left after that (or in fp32) is :class:`NonFiniteOutput`: never written into an image.
        """
        x = tiles.to(self.device, torch.float32)
        with autocast(self.device, self.dtype):
            out = run_padded(self.model, x).float()
        bad = _non_finite(out)
        if len(bad) and self.dtype != torch.float32:
            out[bad] = run_padded(self.model, x[bad]).float()
            if report is not None:
                report.fp32_fallbacks += len(bad)
            bad = _non_finite(out)
        if len(bad):
            raise NonFiniteOutput(
                "the network produced NaN or infinite values (broken weights or hyper-parameters, "
                "e.g. --conv-scale/--img-range?)"
            )
        return out


def _non_finite(out: Tensor) -> Tensor:
    """Indices of the batch items holding a NaN or an infinity."""
    return (~torch.isfinite(out)).flatten(1).any(dim=1).nonzero().flatten()


class _Band:
    """The float accumulator for one grid row of output (a *band*): weighted tile outputs are added
    in, and rows that no later tile touches are handed to the writer, cropped to the image."""

    def __init__(self, plan: TilePlan, write: Writer, device: torch.device | None = None) -> None:
        self.plan, self.write = plan, write
        self.device = device or torch.device("cpu")
        self.rows, self.cols = plan.row_weights, plan.col_weights
        self.height = max(w.hi - w.lo for w in self.rows)
        self.out_h, self.out_w = plan.height * plan.scale, plan.width * plan.scale
        self._weights: dict[tuple[bool, int, torch.device], Tensor] = {}  # made once per tile row/column
        self.buffer: Tensor | None = None  # output rows [lo, lo + height)
        self.lo = 0

    def _weight(self, is_row: bool, index: int, device: torch.device) -> Tensor:
        """Tile row ``index``'s weights as a column vector, or tile column ``index``'s as a row."""
        key = (is_row, index, device)
        if key not in self._weights:
            weight = torch.from_numpy((self.rows if is_row else self.cols)[index].weight)
            self._weights[key] = (weight[:, None] if is_row else weight).to(device)
        return self._weights[key]

    def add(self, out: Tensor, i: int, j: int, y: int, x: int) -> None:
        """Blend tile (i, j) at input position (y, x) into the band; ``out`` is (C, th*s, tw*s)."""
        s, row, col = self.plan.scale, self.rows[i], self.cols[j]
        if self.buffer is None:
            self.buffer = torch.zeros(out.shape[0], self.height, self.plan.padded_width * s, device=self.device)
        piece = out[:, row.lo - y * s : row.hi - y * s, col.lo - x * s : col.hi - x * s]
        piece = piece * self._weight(True, i, piece.device) * self._weight(False, j, piece.device)
        self.buffer[:, row.lo - self.lo : row.hi - self.lo, col.lo : col.hi] += piece.to(self.device, torch.float32)

    def finish_row(self, i: int) -> None:
        """Hand over the rows above the next grid row's first weighted row (without the padding)."""
        assert self.buffer is not None
        row, lo = self.rows[i], self.lo
        finished = self.rows[i + 1].lo if i + 1 < len(self.rows) else lo + self.height
        if min(finished, self.out_h) > lo:
            self.write(lo, self.buffer[:, : min(finished, self.out_h) - lo, : self.out_w])
        carry = row.hi - finished
        if carry > 0:
            self.buffer[:, :carry] = self.buffer[:, finished - lo : row.hi - lo].clone()
        self.buffer[:, max(carry, 0) :].zero_()
        self.lo = finished


# --------------------------------------------------------------------------- sinks


def array_writer(out: np.ndarray, rows_per_step: int = 32, device_rows_per_step: int = 512) -> Writer:
    """A writer quantising blocks into ``out`` (H x W x C uint8/uint16) a few rows at a time,
    so the float temporaries stay small; blocks on a device are quantised there, in larger steps
    (fewer kernel launches and host copies), and only the integers cross to the host."""

    def write(row: int, block: Tensor) -> None:
        step = rows_per_step if block.device.type == "cpu" else device_rows_per_step
        for start in range(0, block.shape[1], step):
            part = block[:, start : start + step]
            out[row + start : row + start + part.shape[1]] = quantize(part, out.dtype)

    return write


def array_reader(array: np.ndarray) -> Reader:
    """Tiles of an H x W x C uint8/uint16 array as (C, h, w) float32 in [0, 1]."""

    def read(y0: int, y1: int, x0: int, x1: int) -> Tensor:
        return to_tensor(array[y0:y1, x0:x1])

    return read


__all__ = [
    "DEVICE_BANDS",
    "AxisWeight",
    "Blend",
    "RunReport",
    "TileChoice",
    "TileEngine",
    "TilePlan",
    "TileStats",
    "array_reader",
    "array_writer",
    "autocast",
    "available_ram",
    "axis_starts",
    "axis_weights",
    "band_device",
    "choose_batch",
    "choose_tile",
    "default_overlap",
    "free_device_memory",
    "is_out_of_memory",
    "make_plan",
    "padded_reader",
    "reflect_indices",
    "release_cached_memory",
    "round_overlap",
    "round_tile",
]
