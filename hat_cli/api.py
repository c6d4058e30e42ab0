"""Python API: ``Upscaler.from_preset("hat-s", scale=4).upscale(image)``.

:class:`Upscaler` runs any network family (:mod:`hat_cli.model`) through the tiling engine and
implements the upscaler contract (:class:`hat_cli.upscaling.UpscalerBase`); :func:`open_upscaler`
is the CLI's model choice (a preset, a file, or the bicubic baseline). The CLI is a thin layer over
this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from .baseline import BicubicUpscaler
from .checkpoint import build_model, load_model
from .choice import ModelChoice, choose_model, fetch_checkpoint
from .errors import ConfigError
from .model import layers
from .model.compiled import CompiledNetwork
from .model.contract import Network
from .model.ensemble import SelfEnsemble
from .pixels import check_pixel_type, quantize, to_tensor
from .registry import Preset, Registry, load_registry
from .store import ProgressCallback
from .tiling import (
    Reader,
    TileEngine,
    TilePlan,
    TileStats,
    Writer,
    array_reader,
    array_writer,
    choose_batch,
    choose_tile,
    make_plan,
)
from .upscaling import Progress, UpscalerBase, upscaler_name

Precision = Literal["auto", "fp32", "bf16", "fp16"]
TileSize = int | Literal["auto"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; explicit devices are checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    # torch knows more device types (meta, xpu, hpu...) than hat runs on: refuse them here, not per file.
    if resolved.type not in ("cpu", "cuda", "mps") or (resolved.type != "cuda" and resolved.index not in (None, 0)):
        raise ConfigError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available on this machine")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU/MPS and bf16 on GPUs that support it."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if precision not in _DTYPES:
        raise ConfigError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("fp16 is not supported on CPU: use --precision fp32 or bf16")
    return _DTYPES[precision]


def image_to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB PIL image or HxWxC uint8/uint16 array -> (1, C, H, W) float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return to_tensor(array).unsqueeze(0)


def tensor_to_array(tensor: torch.Tensor, dtype: type[np.generic] = np.uint8) -> np.ndarray:
    """(1, C, H, W) float -> HxWxC array: clamped and rounded by the pixel layer's rule."""
    return quantize(tensor[0], dtype)


def check_tile(tile: TileSize) -> TileSize:
    """``"auto"`` or a size in input pixels (0 = whole image); anything else is a ConfigError."""
    if tile == "auto":
        return tile
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ConfigError(f"tile {tile!r}: use 'auto', 0 (whole image) or a positive size in pixels")
    return tile


class Upscaler(UpscalerBase):
    """A loaded network (any family) on a device, ready to upscale images.

    Tiling (see :mod:`hat_cli.tiling`): ``tile="auto"`` picks the largest tile that fits in free
    memory (the whole image when it fits: then the result is exactly the untiled network's);
    ``tile=N`` uses N-pixel input tiles (rounded down to a multiple of the network's window, and
    never below one window: ``tile=7`` runs 16-pixel tiles on the official models), ``tile=0`` never
    tiles. ``tile_overlap`` (input pixels, default two windows and at least 32) is shared by
    neighbouring tiles and blended. ``tile_batch`` tiles go through one forward (default: as many
    as fit on CUDA, 1 on CPU). ``memory_budget`` (bytes) replaces the free-memory probe of
    ``tile="auto"``. After each image, :attr:`last_stats` says what was run.

    ``progress(done, total)`` is called after every tile: pass it to a call, or set the
    :attr:`progress` attribute once; :attr:`on_stats` is called with each image's stats.

    ``compile=True`` runs the network through ``torch.compile`` (first call per input-size bucket
    compiles; outputs are unchanged, see :class:`hat_cli.model.compiled.CompiledNetwork`).

    ``self_ensemble=True`` averages the network over the 8 flips/rotations of each tile (8x the
    compute, a little sharper and more accurate; :class:`hat_cli.model.ensemble.SelfEnsemble`);
    ``name`` then gets a ``+`` as in the papers (EDSR+, RCAN+).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: TileSize = "auto",
        name: str = "",
        tile_overlap: int | None = None,
        tile_batch: int | None = None,
        memory_budget: int | None = None,
        compile: bool = False,
        self_ensemble: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.model.requires_grad_(False)
        if self.device.type in layers.CHANNELS_LAST_DEVICES:  # convolution weights in NHWC too
            self.model.to(memory_format=torch.channels_last)
        # What inference calls: the network, or wrappers of it (same contract, same outputs).
        self.runner: Network = CompiledNetwork(self.model) if compile else self.model
        if self_ensemble:
            self.runner = SelfEnsemble(self.runner)
        self.tile = check_tile(tile)
        if tile_overlap is not None and tile_overlap < 0:
            raise ConfigError(f"tile overlap {tile_overlap}: must be >= 0")
        if tile_batch is not None and tile_batch < 1:
            raise ConfigError(f"tile batch {tile_batch}: must be >= 1")
        self.tile_overlap = tile_overlap
        self.tile_batch = tile_batch
        self.memory_budget = memory_budget
        self.name = upscaler_name(name, self_ensemble)
        self.last_stats: TileStats | None = None
        self._engine = TileEngine(self.runner, self.device, self.dtype)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(
        cls,
        name: str,
        scale: int | None = None,
        registry: Registry | None = None,
        offline: bool = False,
        progress: ProgressCallback | None = None,
        **kwargs,
    ) -> Upscaler:
        """Resolve a preset (``hat-s``, ``HAT_SRx4``...) and load its checkpoint from the cache,
        downloading it first when missing unless ``offline`` (or ``HAT_OFFLINE=1``)."""
        preset = (registry or load_registry()).resolve(name, scale)
        return cls.from_resolved_preset(preset, offline=offline, progress=progress, **kwargs)

    @classmethod
    def from_resolved_preset(
        cls, preset: Preset, offline: bool = False, progress: ProgressCallback | None = None, **kwargs
    ) -> Upscaler:
        path = fetch_checkpoint(ModelChoice(preset.name, preset.scale, preset=preset), offline, progress)
        assert path is not None
        return cls(load_model(path, **preset.hidden), name=preset.name, **kwargs)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        conv_scale: float | None = None,
        img_range: float | None = None,
        **kwargs,
    ) -> Upscaler:
        """Load any supported checkpoint (.pth/.pt/.safetensors); the family and architecture are
        read from the tensors. ``conv_scale``/``img_range`` (HAT only) override the file's values."""
        model = load_model(path, conv_scale=conv_scale, img_range=img_range)
        kwargs.setdefault("name", Path(path).name)
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def precision(self) -> str:
        """The compute precision's name: fp32, bf16 or fp16."""
        return _NAMES[self.dtype]

    # ------------------------------------------------------------------ inference
    def plan(self, height: int, width: int, channels: int = 3, output_bytes: int = 0) -> tuple[TilePlan, TileStats]:
        """The tile plan for a ``height x width`` input, and the stats record describing it.

        ``output_bytes``: the caller's output buffer, counted against free memory by ``tile="auto"``.
        """
        runner, multiple = self.runner, self.runner.size_multiple
        reason = ""
        tile, batch = self.tile, self.tile_batch
        if tile == "auto":
            choice = choose_tile(
                runner,
                height,
                width,
                self.device,
                self.dtype,
                self.tile_overlap,
                channels=channels,
                output_bytes=output_bytes,
                batch=batch,
                budget=self.memory_budget,
            )
            tile, batch, reason = choice.tile, choice.batch, f"auto: {choice.reason}"
        plan = make_plan(height, width, runner.scale, multiple, tile, self.tile_overlap)
        if batch is None:
            batch = choose_batch(runner, plan, self.device, self.dtype, self.memory_budget)
        stats = TileStats(
            height=height,
            width=width,
            tile=0 if plan.whole else max(plan.tile_h, plan.tile_w),
            overlap=plan.overlap,
            grid=(len(plan.ys), len(plan.xs)),
            batch=batch,
            device=str(self.device),
            precision=_NAMES[self.dtype],
            reason=reason,
        )
        return plan, stats

    def _run(self, plan: TilePlan, stats: TileStats, read: Reader, write: Writer, progress: Progress | None) -> None:
        self._engine.batch = stats.batch
        self.last_stats = stats
        stats.report = self._engine.run(plan, read, write, progress or self.progress)
        if self.on_stats is not None:
            self.on_stats(stats)

    @torch.inference_mode()
    def upscale_tensor(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, C, sH, sW) float32 (unclipped) on the input's device.

        Tiled like every other entry point; the result is a float canvas, so prefer
        :meth:`upscale_array` for large images.
        """
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        count, channels, height, width = x.shape
        scale = self.scale
        out = torch.empty(count, channels, height * scale, width * scale)
        plan, stats = self.plan(height, width, channels, output_bytes=out.numel() * 4)
        source = x.float()
        for image, canvas in zip(source, out, strict=True):

            def read(y0: int, y1: int, x0: int, x1: int, image: torch.Tensor = image) -> torch.Tensor:
                return image[:, y0:y1, x0:x1]

            def write(row: int, block: torch.Tensor, canvas: torch.Tensor = canvas) -> None:
                canvas[:, row : row + block.shape[1]] = block

            self._run(plan, stats, read, write, progress)
        return out.to(x.device)

    def upscale_array(self, array: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """H x W x C (or H x W for 1-channel models) uint8/uint16 -> same layout and dtype, s times larger.

        Peak memory is the output array plus one band of tiles: rows are quantised into the
        output as soon as no later tile touches them.
        """
        array = np.asarray(array)
        check_pixel_type(array.dtype)
        squeeze = array.ndim == 2
        if squeeze:
            array = array[:, :, None]
        channels = self.model.in_channels
        if array.ndim != 3 or array.shape[2] != channels:
            raise ValueError(f"expected an H x W x {channels} array for this model, got shape {array.shape}")
        height, width = array.shape[:2]
        scale = self.scale
        out = np.empty((height * scale, width * scale, channels), dtype=array.dtype)
        plan, stats = self.plan(height, width, channels, output_bytes=out.nbytes)
        self._run(plan, stats, array_reader(array), array_writer(out), progress)
        return out[:, :, 0] if squeeze else out


def build_upscaler(
    choice: ModelChoice, offline: bool = False, progress: ProgressCallback | None = None, **kwargs
) -> UpscalerBase:
    """The upscaler a :class:`~hat_cli.choice.ModelChoice` names: the bicubic baseline, a file's
    network (built from the tensors the choice already read), or a preset's (fetched first)."""
    if choice.is_bicubic:  # no weights: device/precision/tile do not apply
        return BicubicUpscaler(choice.scale)
    if choice.loaded is not None:
        state, family, config = choice.loaded
        kwargs.setdefault("name", choice.name)
        return Upscaler(build_model(state, family, config, choice.weights), **kwargs)
    if choice.weights is not None:
        return Upscaler.from_file(choice.weights, **choice.hidden, **kwargs)
    assert choice.preset is not None
    return Upscaler.from_resolved_preset(choice.preset, offline=offline, progress=progress, **kwargs)


def open_upscaler(
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    scale: int | None = None,
    registry: str | os.PathLike[str] | None = None,
    conv_scale: float | None = None,
    img_range: float | None = None,
    offline: bool = False,
    progress: ProgressCallback | None = None,
    **kwargs,
) -> UpscalerBase:
    """The CLI's model choice (:func:`hat_cli.choice.choose_model`: ``--weights FILE`` or ``--model
    NAME``, default ``$HAT_MODEL`` or ``hat``, at ``--scale``, default 4 where the model has x4;
    ``bicubic`` is the MATLAB baseline), built. A checkpoint that is not cached and cannot be fetched
    is a :class:`ModelNotAvailable`/:class:`DownloadError` that also suggests the bundled ``hat-tiny``.
    """
    choice = choose_model(model, weights, scale, registry, conv_scale, img_range)
    return build_upscaler(choice, offline=offline, progress=progress, **kwargs)
