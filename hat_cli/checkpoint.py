"""Reading and writing checkpoints safely (.pth/.pt with ``weights_only``, .safetensors), and
loading one into the network family it belongs to.

A checkpoint is read without ever running code from it: pickles go through
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers.
Shapes are not trusted either: before anything is built, zip members are capped in size,
tensors must own the storage they claim, the family's detector validates the structure, and the
detected network must have exactly as many parameters as the file holds; the network is first
built on the meta device (no memory) to check a strict load.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write, write_bytes
from .errors import CheckpointError, ConfigError, first_line
from .model.contract import Family, ModelConfig
from .model.families import family_titles, find_family

# Keys under which training frameworks nest the weights, in order of preference
# (BasicSR writes params_ema and params; EMA weights are the ones every official test uses).
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
# Buffers the official code stores; they are recomputed here, never trusted.
_IGNORED_BUFFERS = ("relative_position_index_SA", "relative_position_index_OCA", "attn_mask")
META_KEY = "hat_config"  # where we store hyper-parameters (safetensors metadata / .pth dict key)
# A torch.save zip stores its members uncompressed; a re-zipped (deflated) file of float weights
# shrinks little. Anything inflating beyond this is refused before it is read.
_MAX_INFLATION = 2.0
_ZIP_SLACK = 1 << 20
_SAFETENSORS_MAGIC_MAX = 100_000_000  # header length field sanity: see _looks_like_safetensors


# --------------------------------------------------------------------------- reading


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a {family_titles()} checkpoint (no state dict inside)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor) or not isinstance(key, str):
            continue
        key = key.removeprefix("module.")
        if key.rsplit(".", 1)[-1] in _IGNORED_BUFFERS or key.endswith("relative_position_index"):
            continue
        _check_storage(key, value, path)
        state[key] = value
    return state


def _check_storage(key: str, tensor: torch.Tensor, path: Path) -> None:
    """Refuse tensors that claim more elements than their storage holds (zero-stride expansions)."""
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise CheckpointError(f"{path}: tensor {key} is not a dense tensor")
    needed = tensor.numel() * tensor.element_size()
    if needed > tensor.untyped_storage().nbytes():
        raise CheckpointError(
            f"{path}: tensor {key} claims {tuple(tensor.shape)} over {tensor.untyped_storage().nbytes()} bytes "
            "of storage (an expanded tensor): refused"
        )


def _check_zip(path: Path) -> None:
    """Cap what a zip checkpoint inflates to, before torch reads it."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt zip: {exc})") from exc
    limit = _MAX_INFLATION * path.stat().st_size + _ZIP_SLACK
    if inflated > limit:
        raise CheckpointError(
            f"{path}: refused: its zip members inflate to {inflated:,} bytes from {path.stat().st_size:,} "
            "(a compression bomb?); re-save it with torch.save or as .safetensors"
        )


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then ``{``."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < _SAFETENSORS_MAGIC_MAX


def _read_safetensors(path: Path) -> tuple[Any, dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            file_meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({exc})") from exc
    return raw, _parse_meta(file_meta[META_KEY], path) if META_KEY in file_meta else {}


def _read_pickle(path: Path) -> tuple[Any, dict[str, Any]]:
    _check_zip(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # torch raises many types: UnpicklingError, RuntimeError, EOFError...
        text = first_line(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors "
                f"(possibly code); it was not executed. Convert it to .safetensors from a trusted source."
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {text}") from exc
    meta = raw.get(META_KEY) if isinstance(raw, Mapping) else None
    return raw, dict(meta) if isinstance(meta, Mapping) else {}


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, metadata)`` from a .pth/.pt/.ckpt or .safetensors file.

    The state dict is unwrapped from ``params_ema``/``params``/... with any ``module.`` prefix
    stripped and official index buffers dropped. ``metadata`` holds hyper-parameters we wrote.
    The format is told by content, not by the name (a ``.pth`` that is really safetensors works).
    """
    path = Path(path)
    raw, meta = read_checkpoint_file(path)
    return _unwrap(raw, path), meta


def read_checkpoint_file(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """``(what the file holds, metadata)``: :func:`read_checkpoint`'s safe read without unwrapping
    (a training state keeps its optimiser's and scheduler's entries); weights-only, zip-bomb capped."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        safetensors = _looks_like_safetensors(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return _read_safetensors(path) if safetensors else _read_pickle(path)


def state_dict_of(raw: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The network's weights in what :func:`read_checkpoint_file` returned (see :func:`read_checkpoint`)."""
    return _unwrap(raw, Path(path))


def _parse_meta(text: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {META_KEY!r} is not JSON") from exc
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- identifying


def hidden_values(family: Family, meta: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters shapes cannot show: ``overrides`` (not None), then the file's metadata."""
    names = family.config_type.HIDDEN
    given = {key: value for key, value in overrides.items() if value is not None}
    foreign = sorted(set(given) - set(names))
    if foreign:
        flags = ", ".join("--" + key.replace("_", "-") for key in foreign)
        raise ConfigError(f"{flags} do(es) not apply to {family.title} checkpoints")
    stored = {key: meta[key] for key in names if key in meta}
    return {**stored, **given}


def identify(
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    path: str | os.PathLike[str],
    **overrides: Any,
) -> tuple[Family, ModelConfig]:
    """The family a state dict belongs to and its hyper-parameters (shapes, then ``overrides``
    and metadata for the values shapes cannot show). One :class:`CheckpointError` otherwise."""
    family = find_family(state)
    if family is None:
        raise CheckpointError(f"{path}: not a {family_titles()} checkpoint (no known network's tensors inside)")
    hidden = hidden_values(family, meta, overrides)
    try:
        config = family.detect(state, hidden)
    except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as exc:
        raise CheckpointError(f"{path}: not a {family.title} checkpoint: {exc}") from exc
    held = sum(tensor.numel() for tensor in state.values())
    if config.num_params != held:
        raise CheckpointError(
            f"{path}: tensors do not match a {family.title} of the detected shape "
            f"({held:,} values in the file, {config.num_params:,} parameters in the network)"
        )
    return family, config


# --------------------------------------------------------------------------- building


def build_model(
    state: Mapping[str, torch.Tensor], family: Family, config: ModelConfig, path: str | os.PathLike[str]
) -> nn.Module:
    """The network of ``config`` in eval mode with ``state`` loaded strictly (checked on the meta
    device first, so a mismatching file never allocates a network)."""
    for device in ("meta", "cpu"):
        with torch.device(device):
            model = family.build(config)
        try:
            # On meta, assign: the file's tensors take the parameters' places without a copy.
            model.load_state_dict(state, strict=True, assign=device == "meta")
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: tensors do not match a {family.title} of the detected shape: {first_line(exc)}"
            ) from exc
    return model.eval()


def load_model(path: str | os.PathLike[str], fused_attention: bool = True, **overrides: Any) -> nn.Module:
    """Read a checkpoint, detect its family and architecture, return the loaded network (CPU, eval).

    ``overrides`` are the values shapes cannot show (HAT: ``conv_scale``, ``img_range``); None means
    "from the file's metadata, else the family default". ``fused_attention=False`` selects HAT's
    plain softmax path (the parity reference).
    """
    state, meta = read_checkpoint(path)
    family, config = identify(state, meta, path, **overrides)
    model = build_model(state, family, config, path)
    if not fused_attention and hasattr(model, "set_fused_attention"):
        model.set_fused_attention(False)
    return model


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str | os.PathLike[str],
    params_ema: Mapping[str, torch.Tensor],
    config: ModelConfig,
    params: Mapping[str, torch.Tensor] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an official-format checkpoint atomically (:func:`hat_cli.atomic.atomic_write`).

    ``.pth``: ``{"params_ema", "params", "hat_config", **extra}`` (BasicSR/official layout).
    ``.safetensors``: the EMA weights, hyper-parameters as JSON metadata (``extra`` is refused).
    """
    path = Path(path)
    meta = {**config.to_dict(), **(extra_meta or {})}
    ema = _cpu(params_ema)
    if path.suffix.lower() == ".safetensors":
        if extra:
            raise ValueError("safetensors files hold tensors only")
        from safetensors.torch import save

        return write_bytes(path, save(ema, metadata={META_KEY: json.dumps(meta), "format": "pt"}))
    payload: dict[str, Any] = {"params_ema": ema, META_KEY: meta, **(extra or {})}
    if params is not None:
        payload["params"] = _cpu(params)
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
