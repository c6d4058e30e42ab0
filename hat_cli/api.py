"""Python API: ``Upscaler.from_preset("hat-s", scale=4).upscale(image)``.

The CLI is a thin layer over this module.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, overload

import numpy as np
import torch
from PIL import Image

from .bench import BicubicUpscaler
from .checkpoint import load_model
from .errors import ConfigError
from .model import HAT
from .model.compiled import CompiledHAT
from .registry import Preset, Registry, load_registry
from .store import ProgressCallback, ensure_checkpoint

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
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
    array = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim == 2:
        array = array[:, :, None]
    peak = 65535.0 if array.dtype == np.uint16 else 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).float().div_(peak)
    return tensor.unsqueeze(0)


def tensor_to_array(tensor: torch.Tensor, dtype: type[np.generic] = np.uint8) -> np.ndarray:
    """(1, C, H, W) float -> HxWxC array, clamped and rounded like BasicSR's ``tensor2img``."""
    peak = 65535.0 if dtype == np.uint16 else 255.0
    out = (tensor[0].float().clamp(0, 1) * peak).round().permute(1, 2, 0)
    return out.to("cpu").numpy().astype(dtype)


class Upscaler:
    """A loaded HAT on a device, ready to upscale images.

    ``tile=0`` runs the whole image at once; tiled inference splits larger images.
    ``compile=True`` runs the network through ``torch.compile`` (first call per input-size bucket
    compiles; outputs are unchanged, see :class:`hat_cli.model.compiled.CompiledHAT`).
    """

    def __init__(
        self,
        model: HAT,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: int = 0,
        name: str = "",
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.model.requires_grad_(False)
        # What inference calls: the model, or with ``compile`` a torch.compile'd forward with one
        # graph per window-multiple input shape (see hat_cli.model.compiled). Same outputs.
        self.runner: HAT | CompiledHAT = CompiledHAT(self.model) if compile else self.model
        self.tile = tile
        self.name = name or "custom"

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
        path = ensure_checkpoint(preset, offline=offline, progress=progress)
        model = load_model(path, conv_scale=preset.config.conv_scale, img_range=preset.config.img_range)
        return cls(model, name=preset.name, **kwargs)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        conv_scale: float | None = None,
        img_range: float | None = None,
        **kwargs,
    ) -> Upscaler:
        """Load any HAT checkpoint (.pth/.pt/.safetensors); the architecture is read from shapes."""
        model = load_model(path, conv_scale=conv_scale, img_range=img_range)
        kwargs.setdefault("name", Path(path).name)
        return cls(model, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def scale(self) -> int:
        return self.model.scale

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, C, sH, sW) float32 (unclipped) on the input's device."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        with self._autocast():
            out = self.runner(x.to(self.device, torch.float32))
        return out.float().to(x.device)

    @overload
    def upscale(self, image: Image.Image) -> Image.Image: ...
    @overload
    def upscale(self, image: np.ndarray) -> np.ndarray: ...
    @overload
    def upscale(self, image: torch.Tensor) -> torch.Tensor: ...

    def upscale(self, image):
        """Upscale a PIL image (-> RGB PIL image), an HxWx3 uint8 array, or a (B,3,H,W) tensor."""
        if isinstance(image, torch.Tensor):
            return self.upscale_tensor(image)
        out = self.upscale_tensor(image_to_tensor(image))
        if isinstance(image, Image.Image):
            return Image.fromarray(tensor_to_array(out))
        return tensor_to_array(out, np.uint16 if np.asarray(image).dtype == np.uint16 else np.uint8)


DEFAULT_MODEL_ENV = "HAT_MODEL"
DEFAULT_FAMILY = "hat"


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
) -> Upscaler | BicubicUpscaler:
    """The CLI's model choice: ``--weights FILE`` or ``--model NAME`` (default ``$HAT_MODEL`` or
    the ImageNet-pretrained ``hat`` family) at ``--scale``; ``bicubic`` is the MATLAB baseline."""
    if weights is not None:
        if model is not None:
            raise ConfigError("give either --model or --weights, not both")
        upscaler = Upscaler.from_file(weights, conv_scale=conv_scale, img_range=img_range, **kwargs)
        if scale is not None and scale != upscaler.scale:
            raise ConfigError(f"{weights} is a x{upscaler.scale} model but --scale {scale} was given")
        return upscaler
    if conv_scale is not None or img_range is not None:
        raise ConfigError("--conv-scale/--img-range apply to --weights files only")
    name = model or os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_FAMILY
    if name.lower() == BicubicUpscaler.name:  # no weights: device/precision/tile do not apply
        if scale is None:
            raise ConfigError("--model bicubic needs --scale")
        return BicubicUpscaler(scale)
    return Upscaler.from_preset(
        name, scale, registry=load_registry(registry), offline=offline, progress=progress, **kwargs
    )
