"""Local Attribution Maps (LAM; Gu & Dong, CVPR 2021): which input pixels a super-resolution
network uses to reconstruct one small window of its output, as the HAT paper analyses them.

The computation is the official one (chxy95/LAM_Demo, the version the HAT authors ran):

* **Objective** D(SR): the gradient magnitude ``sqrt(dy^2 + dx^2)`` of the SR image, from forward
  differences along rows and columns (no epsilon), summed over a ``size x size`` window whose
  top-left corner is at row ``y``, column ``x`` of the SR image, and over the channels.
* **Path**: a progressive Gaussian blur of the LR input in ``steps`` steps. With ``sigma_i =
  linspace(sigma, 0, steps + 1)[i]`` and isotropic ``kernel x kernel`` Gaussians ``G_i`` (standard
  deviation ``sigma_i + 1e-5``, normalised), step ``i`` feeds ``LR * G_{i+1}`` to the network and
  weighs its input gradient by the path derivative ``LR * (G_{i+1} - G_i) * steps`` (``*`` is a
  per-channel correlation with reflect-101 borders, OpenCV's ``filter2D`` default). The last step is
  the unblurred input.
* **Attribution** (3, h, w): the mean over the steps of ``dD/dinput * derivative`` (non-finite
  gradients set to 0). **Map**: ``|sum over channels|`` divided by its maximum.
  **Diffusion index** (DI): ``(1 - Gini(map)) * 100``; the more pixels a network uses, the higher.

The network sees the input as ``hat upscale`` gives it (:func:`hat_cli.model.padding.run_padded`),
so any :class:`~hat_cli.model.contract.Network` works, whatever its size multiple or input range.
Steps go through the network in batches (as many as fit in memory; halved on out-of-memory).

Library code: torch and numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .errors import ConfigError, DeviceOutOfMemory, ImageTooSmall, InputImageError
from .model.contract import ALLOCATOR_SLACK, Network
from .model.padding import run_padded
from .pixels import to_tensor
from .tiling import BUDGET_SHARE, autocast, free_device_memory, is_out_of_memory, release_cached_memory

DEFAULT_SIGMA = 1.2
DEFAULT_STEPS = 50
DEFAULT_KERNEL = 9
DEFAULT_WINDOW = 16
# Bounds on what a user may ask for (20x, 11x and ~800x the defaults): the path's kernels and
# blurred inputs take about 24 * (steps + 1) * kernel^2 bytes, 250 MB at these limits.
MAX_STEPS = 1000
MAX_KERNEL = 101
MAX_SIGMA = 1000.0
KERNEL_EPSILON = 1e-5  # added to every sigma (the official isotropic_gaussian_kernel)
GINI_EPSILON = 1e-7  # added to every value before the Gini coefficient (the official gini)
MAX_STEP_BATCH = 64  # steps per forward/backward at most (the default path has 50)

Progress = Callable[[int, int], None]  # (steps done, steps total)


@dataclass(frozen=True)
class Window:
    """The analysed ``size x size`` window of the SR image: top-left corner at column ``x``, row ``y``."""

    x: int
    y: int
    size: int = DEFAULT_WINDOW

    def to_json(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "size": self.size}


@dataclass
class LamResult:
    """What :func:`attribute` computed, and how fast."""

    attribution: np.ndarray  # (C, h, w) float32: mean over the path of gradient x path derivative
    map: np.ndarray  # (h, w) float32: |channel sum| / its max, in 0..1
    sr: np.ndarray  # (C, sh, sw) float32: SR of the unblurred input, 0..1 unclipped
    diffusion_index: float
    window: Window
    sigma: float
    steps: int
    kernel: int
    batch: int  # steps per forward/backward actually used (after any out-of-memory halving)
    seconds: float
    oom_retries: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.inf

    def to_json(self) -> dict[str, object]:
        return {
            "diffusion_index": self.diffusion_index,
            "window": self.window.to_json(),
            "sigma": self.sigma,
            "steps": self.steps,
            "kernel": self.kernel,
            "batch": self.batch,
            "seconds": round(self.seconds, 4),
            "steps_per_second": round(self.steps_per_second, 3),
        }


# --------------------------------------------------------------------------- validation


def check_parameters(sigma: float, steps: int, kernel: int) -> None:
    """One :class:`ConfigError` per bad path parameter (bounded: the path's kernels and blurred
    inputs grow with ``steps * kernel^2``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps {steps!r}: must be an integer from 1 to {MAX_STEPS} (the official LAM uses 50)")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or not 1 <= kernel <= MAX_KERNEL or kernel % 2 == 0:
        raise ConfigError(f"kernel {kernel!r}: must be an odd integer from 1 to {MAX_KERNEL} (the official LAM uses 9)")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and 0 < sigma <= MAX_SIGMA):
        raise ConfigError(f"sigma {sigma!r}: must be a number > 0 and <= {MAX_SIGMA:g} (the official LAM uses 1.2)")


def check_window(window: Window, sr_height: int, sr_width: int) -> None:
    """The window must lie inside the ``sr_height x sr_width`` SR image (one ConfigError per case)."""
    size = f"{sr_width}x{sr_height}"
    if isinstance(window.size, bool) or not isinstance(window.size, int) or window.size < 1:
        raise ConfigError(f"window size {window.size!r}: must be an integer >= 1")
    if not (0 <= window.x < sr_width and 0 <= window.y < sr_height):
        raise ConfigError(
            f"window corner x={window.x}, y={window.y} is outside the {size} SR image "
            f"(x must be in 0..{sr_width - 1}, y in 0..{sr_height - 1})"
        )
    if window.size > min(sr_width, sr_height):
        raise ConfigError(f"window size {window.size} is larger than the {size} SR image")
    if window.x + window.size > sr_width or window.y + window.size > sr_height:
        raise ConfigError(
            f"window of {window.size} px at x={window.x}, y={window.y} runs past the {size} SR image "
            f"(the corner can be at most x={sr_width - window.size}, y={sr_height - window.size})"
        )


def check_image(height: int, width: int, kernel: int) -> None:
    """The blur needs more pixels than the kernel radius (reflect-101 borders), the objective two."""
    need = max(2, kernel // 2 + 1)
    if height < need or width < need:
        raise ImageTooSmall(
            f"input image {width}x{height} is too small for LAM with a {kernel}x{kernel} blur kernel: "
            f"it needs at least {need}x{need} pixels (use a larger image or a smaller --kernel)"
        )


# --------------------------------------------------------------------------- the blur path


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """() -> (size, size) float64: the official isotropic Gaussian, std ``sigma + 1e-5``, sum 1."""
    radius = torch.arange(size, dtype=torch.float64) - size // 2
    squared = radius[:, None] ** 2 + radius[None, :] ** 2
    kernel = torch.exp(-squared / (2.0 * (sigma + KERNEL_EPSILON) ** 2))
    return kernel / kernel.sum()


def path_kernels(sigma: float, steps: int, size: int) -> tuple[Tensor, Tensor]:
    """() -> ((steps, l, l), (steps, l, l)) float64: each step's blur and path-derivative kernels.

    Step ``i`` blurs with ``G(sigma_{i+1})``; its derivative kernel is ``(G(sigma_{i+1}) -
    G(sigma_i)) * steps``, with ``sigma_i = linspace(sigma, 0, steps + 1)[i]``.
    """
    sigmas = np.linspace(sigma, 0.0, steps + 1)
    gaussians = torch.stack([gaussian_kernel(size, float(s)) for s in sigmas])
    return gaussians[1:], (gaussians[1:] - gaussians[:-1]) * steps


def correlate(image: Tensor, kernels: Tensor) -> Tensor:
    """(C, h, w), (K, l, l) -> (K, C, h, w): each channel correlated with each kernel, reflect-101 borders."""
    radius = kernels.shape[-1] // 2
    planes = rearrange(image, "c h w -> c 1 h w")
    if radius:
        planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    weight = rearrange(kernels.to(image), "k l m -> k 1 l m")
    return rearrange(F.conv2d(planes, weight), "c k h w -> k c h w")


# --------------------------------------------------------------------------- the objective


def window_gradient(sr: Tensor, window: Window) -> Tensor:
    """(B, C, H, W) -> (): the official ``attr_grad``: sum over the window of ``sqrt(dy^2 + dx^2)``.

    ``dy``/``dx`` are forward differences, so the magnitude exists on (H-1, W-1) pixels; a window
    touching the last row/column loses it, as in the official slicing.
    """
    patch = sr[:, :, window.y : window.y + window.size + 1, window.x : window.x + window.size + 1].float()
    rows = (patch[:, :, :-1, :-1] - patch[:, :, 1:, :-1]) ** 2
    cols = (patch[:, :, :-1, :-1] - patch[:, :, :-1, 1:]) ** 2
    return torch.sqrt(rows + cols).sum()


# --------------------------------------------------------------------------- statistics


def gini(values: np.ndarray) -> float:
    """The Gini coefficient of the flattened ``values`` (official: shifted to >= 0, + 1e-7, sorted).

    ``sum((2i - n - 1) x_i) / (n sum(x_i))`` for the sorted ``x_1 <= ... <= x_n``: 0 when all are
    equal, towards 1 when one value holds everything.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("gini of an empty array")
    if flat.min() < 0:
        flat = flat - flat.min()
    flat = np.sort(flat + GINI_EPSILON)
    count = flat.size
    index = np.arange(1, count + 1)
    return float(np.sum((2 * index - count - 1) * flat) / (count * np.sum(flat)))


def diffusion_index(attribution_map: np.ndarray) -> float:
    """(h, w) -> DI = (1 - Gini) * 100: the share of input pixels the network draws on, in 0..100."""
    return (1.0 - gini(attribution_map)) * 100.0


def abs_normalised(attribution: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h, w): ``|sum over channels|`` over its max (official ``grad_abs_norm``)."""
    total = np.abs(attribution.sum(axis=0))
    peak = total.max()
    return (total / peak if peak > 0 else total).astype(np.float32)


# --------------------------------------------------------------------------- inputs


def to_chw(image: Tensor | np.ndarray) -> Tensor:
    """An H x W (x C) uint8/uint16/float (0..1) array or a (C, h, w)/(1, C, h, w) tensor in 0..1
    -> (C, h, w) float32 in 0..1 (on the tensor's device; arrays on the CPU)."""
    if isinstance(image, np.ndarray):
        array = image[:, :, None] if image.ndim == 2 else image
        if array.ndim != 3:
            raise ValueError(f"expected an H x W x C array, got shape {image.shape}")
        if array.dtype in (np.uint8, np.uint16):
            return to_tensor(array)
        return rearrange(torch.from_numpy(np.array(array, dtype=np.float32)), "h w c -> c h w")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"expected a (C, h, w) tensor, got shape {tuple(image.shape)}")
    return image.detach().float()


# --------------------------------------------------------------------------- batching


class SavedTensors:
    """Counts the bytes autograd keeps for the backward (unique storages, parameters excluded)
    while active: the memory a step costs on top of a forward, measured instead of guessed."""

    def __init__(self, net: Network) -> None:
        parameters = getattr(net, "parameters", None)
        buffers = getattr(net, "buffers", None)
        tensors = [*parameters(), *buffers()] if callable(parameters) and callable(buffers) else []
        self._skip = {tensor.untyped_storage().data_ptr() for tensor in tensors}
        self._sizes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._skip:
            self._sizes[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def step_bytes(net: Network, height: int, width: int, saved: int, dtype: torch.dtype) -> float:
    """Peak bytes of one path step: the activations kept for the backward (``saved``, measured on
    the first step, plus allocator slack) and the working set of a forward
    (``bytes_per_input_pixel`` per padded input pixel).

    A constant "backward factor" over the forward estimate does not work: the saved activations grow
    with the network's depth, the forward's working set does not (calibrated in
    ``benchmarks/bench_lam.py --memory``: peak RSS of forward + backward is within 20 % of this).
    """
    multiple = max(1, int(net.size_multiple))
    padded = -(-height // multiple) * multiple * (-(-width // multiple) * multiple)
    return saved * ALLOCATOR_SLACK + float(net.bytes_per_input_pixel(dtype)) * padded


def choose_step_batch(per_step: float, steps: int, device: torch.device, budget: int | None = None) -> int:
    """Path steps per forward/backward: as many as fit in ``budget`` bytes (default: a share of the
    free memory of ``device``, as tiling uses), at most ``steps`` and :data:`MAX_STEP_BATCH`."""
    if budget is None:
        budget = int(free_device_memory(device) * BUDGET_SHARE.get(device.type, 0.5))
    return int(max(1, min(steps, MAX_STEP_BATCH, budget // max(per_step, 1.0))))


def _path_chunk(
    net: Network, lr: Tensor, blur: Tensor, derivative: Tensor, window: Window, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """One batch of path steps: (C, h, w), (B, l, l) x 2 -> (summed gradient x derivative (C, h, w)
    float64, SR of the batch's last step (C, sH, sW))."""
    images = correlate(lr, blur).requires_grad_(True)
    with autocast(lr.device, dtype):
        sr = run_padded(net, images)
    (grad,) = torch.autograd.grad(window_gradient(sr, window), images)
    grad = torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)
    weighted = (grad.double() * correlate(lr, derivative).double()).sum(dim=0)
    return weighted, sr[-1].detach().float()


@dataclass
class _PathRun:
    """The state of one path: steps done, running sum, batch and what memory taught us."""

    net: Network
    lr: Tensor  # (C, h, w) on the device
    window: Window
    blur: Tensor  # (steps, l, l)
    derivative: Tensor  # (steps, l, l)
    dtype: torch.dtype
    batch: int | None  # None: probe one step, then fill the memory budget
    budget: int | None
    progress: Progress | None
    done: int = 0
    retries: int = 0

    def run(self) -> tuple[Tensor, Tensor]:
        """All steps -> (attribution sum (C, h, w) float64, SR of the last step (C, sH, sW))."""
        steps = self.blur.shape[0]
        total = torch.zeros(self.lr.shape, dtype=torch.float64, device=self.lr.device)
        sr = self.lr.new_empty(0)
        while self.done < steps:
            chunk = self._next_chunk(steps)
            if chunk is None:
                continue
            weighted, sr = chunk
            total += weighted
            if self.progress is not None:
                self.progress(self.done, steps)
        return total, sr

    def _next_chunk(self, steps: int) -> tuple[Tensor, Tensor] | None:
        """Run the next batch of steps; None when it ran out of memory (the batch was halved)."""
        probe = self.batch is None
        stop = min(steps, self.done + (1 if probe else self.batch))
        try:
            with SavedTensors(self.net) if probe else nullcontext() as saved:
                chunk = _path_chunk(
                    self.net,
                    self.lr,
                    self.blur[self.done : stop],
                    self.derivative[self.done : stop],
                    self.window,
                    self.dtype,
                )
        except (RuntimeError, MemoryError) as exc:
            if not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
                raise
            self._halve()
            return None
        if saved is not None:
            height, width = self.lr.shape[-2:]
            per_step = step_bytes(self.net, height, width, saved.nbytes, self.dtype)
            self.batch = choose_step_batch(per_step, steps - stop, self.lr.device, self.budget)
        self.done = stop
        return chunk

    def _halve(self) -> None:
        if self.batch is None or self.batch == 1:
            height, width = self.lr.shape[-2:]
            raise DeviceOutOfMemory(
                f"out of memory on {self.lr.device} for one LAM step of a {width}x{height} image "
                "(use a smaller image or crop, or another --device)"
            ) from None
        self.batch, self.retries = max(1, self.batch // 2), self.retries + 1
        release_cached_memory(self.lr.device)


def _network_device(net: Network) -> torch.device:
    parameters = getattr(net, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return parameter.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- the entry point


def attribute(
    net: Network,
    lr: Tensor | np.ndarray,
    window: Window | tuple[int, int, int],
    sigma: float = DEFAULT_SIGMA,
    steps: int = DEFAULT_STEPS,
    kernel: int = DEFAULT_KERNEL,
    batch: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    memory_budget: int | None = None,
) -> LamResult:
    """The local attribution map of ``window`` (SR pixels; ``(x, y, size)`` or :class:`Window`) for
    ``net`` on the LR image ``lr`` (see :func:`to_chw`): (C, h, w) -> :class:`LamResult`.

    ``batch`` path steps per forward/backward (default: the first step alone, measuring what a step
    keeps for its backward, then as many as fit in ``memory_budget`` bytes or a share of free
    memory, see :func:`choose_step_batch`; halved on out-of-memory);
    ``device`` defaults to the network's; ``dtype`` float32, or bfloat16/float16 autocast.
    ``progress(done, total)`` is called after every batch of steps.
    """
    window = window if isinstance(window, Window) else Window(*window)
    check_parameters(sigma, steps, kernel)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"batch {batch!r}: must be an integer >= 1")
    device = torch.device(device) if device is not None else _network_device(net)
    image = to_chw(lr).to(device)
    channels, height, width = image.shape
    if channels != net.in_channels:
        raise InputImageError(f"the model takes {net.in_channels}-channel images, the input has {channels}")
    check_image(height, width, kernel)
    check_window(window, height * net.scale, width * net.scale)
    blur, derivative = path_kernels(float(sigma), steps, kernel)
    path = _PathRun(net, image, window, blur, derivative, dtype, batch, memory_budget, progress)
    started = time.perf_counter()
    total, sr = path.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    attribution = (total / steps).float().cpu().numpy()
    attribution_map = abs_normalised(attribution)
    return LamResult(
        attribution=attribution,
        map=attribution_map,
        sr=sr.cpu().numpy(),
        diffusion_index=diffusion_index(attribution_map),
        window=window,
        sigma=float(sigma),
        steps=steps,
        kernel=kernel,
        batch=path.batch or 1,
        seconds=seconds,
        oom_retries=path.retries,
    )


__all__ = [
    "DEFAULT_KERNEL",
    "DEFAULT_SIGMA",
    "DEFAULT_STEPS",
    "DEFAULT_WINDOW",
    "LamResult",
    "Window",
    "abs_normalised",
    "attribute",
    "check_image",
    "check_parameters",
    "check_window",
    "choose_step_batch",
    "correlate",
    "diffusion_index",
    "gaussian_kernel",
    "gini",
    "path_kernels",
    "step_bytes",
    "window_gradient",
]
