"""Reading and writing HAT checkpoints safely (.pth/.pt with ``weights_only``, .safetensors).

A checkpoint is read without ever running code from it: pickles go through
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .model import HAT, HATConfig, NotHATStateDict, detect_config

# Keys under which training frameworks nest the weights, in order of preference
# (BasicSR writes params_ema and params; EMA weights are the ones every official test uses).
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
# Buffers the official code stores; they are recomputed here, never trusted.
_IGNORED_BUFFERS = ("relative_position_index_SA", "relative_position_index_OCA", "attn_mask")
META_KEY = "hat_config"  # where we store hyper-parameters (safetensors metadata / .pth dict key)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a HAT checkpoint (no state dict inside)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = key.removeprefix("module.")
        if key.rsplit(".", 1)[-1] in _IGNORED_BUFFERS or key.endswith("relative_position_index"):
            continue
        state[key] = value
    return state


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, metadata)`` from a .pth/.pt/.ckpt or .safetensors file.

    The state dict is unwrapped from ``params_ema``/``params``/... with any ``module.`` prefix
    stripped and official index buffers dropped. ``metadata`` holds hyper-parameters we wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    meta: dict[str, Any] = {}
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                raw: Any = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
                file_meta = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({exc})") from exc
        if META_KEY in file_meta:
            meta = _parse_meta(file_meta[META_KEY], path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except Exception as exc:  # torch raises many types: UnpicklingError, RuntimeError, EOFError...
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise CheckpointError(
                    f"{path}: refused: the file holds pickled objects other than tensors "
                    f"(possibly code); it was not executed. Convert it to .safetensors from a trusted source."
                ) from exc
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {text}") from exc
        if isinstance(raw, Mapping) and isinstance(raw.get(META_KEY), Mapping):
            meta = dict(raw[META_KEY])
    return _unwrap(raw, path), meta


def _parse_meta(text: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {META_KEY!r} is not JSON") from exc
    return value if isinstance(value, dict) else {}


def config_from_checkpoint(
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    path: str | os.PathLike[str],
    conv_scale: float | None = None,
    img_range: float | None = None,
) -> HATConfig:
    """Hyper-parameters from tensor shapes; ``conv_scale``/``img_range`` from overrides, then
    the file's metadata, then the official defaults."""
    stored = dict(meta)
    try:
        config = detect_config(
            state,
            conv_scale=conv_scale if conv_scale is not None else float(stored.get("conv_scale", 0.01)),
            img_range=img_range if img_range is not None else float(stored.get("img_range", 1.0)),
        )
    except NotHATStateDict as exc:
        raise CheckpointError(f"{path}: not a HAT checkpoint: {exc}") from exc
    return config


def build_model(
    state: Mapping[str, torch.Tensor],
    config: HATConfig,
    path: str | os.PathLike[str],
    fused_attention: bool = True,
) -> HAT:
    """A HAT in eval mode with ``state`` loaded strictly."""
    model = HAT(config, fused_attention=fused_attention)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: tensors do not match a HAT of the detected shape: {first}") from exc
    return model.eval()


def load_model(
    path: str | os.PathLike[str],
    conv_scale: float | None = None,
    img_range: float | None = None,
    fused_attention: bool = True,
) -> HAT:
    """Read a checkpoint, detect its architecture and return the loaded model (CPU, eval)."""
    state, meta = read_checkpoint(path)
    config = config_from_checkpoint(state, meta, path, conv_scale, img_range)
    return build_model(state, config, path, fused_attention)


def save_checkpoint(
    path: str | os.PathLike[str],
    params_ema: Mapping[str, torch.Tensor],
    config: HATConfig,
    params: Mapping[str, torch.Tensor] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write an official-format checkpoint atomically.

    ``.pth``: ``{"params_ema", "params", "hat_config"}`` (BasicSR/official layout).
    ``.safetensors``: the EMA weights, hyper-parameters as JSON metadata.
    """
    path = Path(path)
    meta = {**config.to_dict(), **(extra_meta or {})}
    ema = {k: v.detach().to("cpu").contiguous() for k, v in params_ema.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(ema, str(tmp), metadata={META_KEY: json.dumps(meta), "format": "pt"})
        else:
            payload: dict[str, Any] = {"params_ema": ema, META_KEY: meta}
            if params is not None:
                payload["params"] = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
            torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
