"""Train or fine-tune a HAT on folders of high-resolution images (the HAT paper's recipe).

Data: every HR image (:func:`hat_cli.imagefiles.list_images`, read as 8 bits: 16-bit files are
rounded to the nearest 8-bit level, files that cannot be read are skipped with one warning) is
mod-cropped to the scale and downscaled *once* with :func:`hat_cli.baseline.make_lr` (MATLAB bicubic, rounded to
uint8: bit-identical to the benchmark LR files); each
iteration crops aligned LR/HR patch pairs at random positions, with random flips and 90-degree
rotations. Loss L1, Adam(0.9, 0.99), cosine or step decay, EMA of the weights.

Files: ``out`` is an official-format checkpoint (``params_ema``/``params`` + ``hat_config``
metadata, see :func:`hat_cli.checkpoint.save_checkpoint`); next to it ``<stem>.state.pth`` holds
everything needed to resume (weights, EMA, optimiser, scheduler, iteration, RNG). Both are written
through :func:`hat_cli.checkpoint.save_checkpoint` (atomic, permissions from the umask) every
``save_every`` iterations, at the end, and on Ctrl-C before it propagates. Both paths are checked
before training starts, so no work is lost to an unwritable output; so are the options, the
architecture and every validation image. A run that fails late (out of memory, a validation image
changed under it) saves what it has trained first, when the failed step left the state whole.

This module has no CLI dependencies; progress goes to an optional callback.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import stat
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import signals_deferred
from .baseline import make_lr
from .checkpoint import identify, read_checkpoint, read_checkpoint_file, save_checkpoint, state_dict_of
from .errors import CheckpointError, ConfigError, DeviceOutOfMemory, HatError, InputImageError, first_line
from .evaluation import ImagePair, pair_images, run_bench
from .imagefiles import list_images as images_in
from .imagefiles import path_kind
from .imageio import read_picture
from .metrics import mod_crop
from .model import HAT, HATConfig
from .pixels import grey_to_rgb, quantize, to_8bit, to_tensor
from .registry import builtin_registry_text, load_registry
from .store import require_checkpoint
from .tiling import is_out_of_memory
from .train_state import BadState, checked_state, is_finite, is_int, tensors

STATE_VERSION = 1

Schedule = Literal["cosine", "step"]
SCALES = (2, 3, 4, 8)  # HATConfig's upscales, less x1 (nothing to learn from an image and itself)
SEED_LIMIT = 2**63  # seeds are stored as int64 (torch, checkpoint metadata)
MAX_BATCH = 4096  # patches per iteration: the batch's index lists are built before torch can say "out of memory"
Warn = Callable[[str], None]


@dataclass
class TrainOptions:
    """Everything a run depends on. ``patch_size`` is the **HR** patch side (BasicSR's
    ``gt_size``): a multiple of ``scale``; the LR patch is ``patch_size // scale`` and is fastest
    when that is a multiple of the window size."""

    hr_dirs: Sequence[str | os.PathLike[str]]
    out: str | os.PathLike[str]
    scale: int = 4
    config: HATConfig | None = None  # architecture for a fresh model (upscale is set from scale)
    init: str | os.PathLike[str] | None = None  # checkpoint file or preset name to fine-tune
    iters: int = 10_000
    batch_size: int = 16
    patch_size: int = 128
    lr: float = 2e-4
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.01  # cosine decays to lr * this
    milestones: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)  # step: fractions of iters, lr halves at each
    warmup_iters: int = 0
    ema_decay: float = 0.999
    seed: int = 0
    val_hr: str | os.PathLike[str] | None = None
    val_every: int = 1000
    save_every: int = 500
    resume: str | os.PathLike[str] | None = None
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads(N); None keeps the process's count (the CLI sets it first)

    def hyper_parameters(self) -> dict[str, Any]:
        """JSON-able summary stored in the checkpoint metadata."""
        data = asdict(self)
        data.pop("config")
        for key in ("out", "init", "val_hr", "resume"):
            data[key] = None if data[key] is None else str(data[key])
        data["hr_dirs"] = [str(p) for p in self.hr_dirs]
        data["milestones"] = list(self.milestones)
        return data


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_options(options: TrainOptions) -> None:
    """Every option in range, before anything is read or built: a bad value is one line now, not a
    torch error after the data has loaded, nor a NaN checkpoint written with success."""
    o = options
    _require(is_int(o.scale) and o.scale in SCALES, f"--scale {o.scale!r}: use 2, 3, 4 or 8")
    counts = (("--iters", o.iters, 1), ("--batch-size", o.batch_size, 1), ("--patch-size", o.patch_size, 1))
    counts += (("--warmup", o.warmup_iters, 0), ("--val-every", o.val_every, 0), ("--save-every", o.save_every, 0))
    for flag, value, low in counts:
        _require(is_int(value) and value >= low, f"{flag} must be a whole number >= {low}, not {value!r}")
    _require(o.batch_size <= MAX_BATCH, f"--batch-size {o.batch_size}: at most {MAX_BATCH} patches per iteration")
    _require(
        o.patch_size % o.scale == 0,
        f"--patch-size {o.patch_size} (HR) must be a multiple of the scale {o.scale}, "
        f"e.g. {max(o.scale, o.patch_size - o.patch_size % o.scale)}",
    )
    _require(
        is_int(o.seed) and 0 <= o.seed < SEED_LIMIT, f"--seed must be a whole number from 0 to 2**63-1, not {o.seed!r}"
    )
    _require(is_finite(o.lr) and o.lr > 0, f"--lr must be a finite number > 0 (2e-4 is usual), not {o.lr!r}")
    _require(
        is_finite(o.ema_decay) and 0 <= o.ema_decay < 1,
        f"--ema-decay must be at least 0 and below 1 (0.999 is usual), not {o.ema_decay!r}",
    )
    _require(o.schedule in ("cosine", "step"), f"--schedule must be cosine or step, not {o.schedule!r}")
    _require(is_finite(o.min_lr_ratio) and 0 <= o.min_lr_ratio <= 1, f"min_lr_ratio {o.min_lr_ratio!r}: use 0..1")
    _require(all(is_finite(m) and m >= 0 for m in o.milestones), f"milestones {o.milestones!r}: use numbers >= 0")
    _require(o.threads is None or (is_int(o.threads) and o.threads >= 1), f"--threads {o.threads!r}: use 1 or more")
    _require(len(o.hr_dirs) > 0, "give at least one --hr folder of training images")


@dataclass
class TrainProgress:
    """What the callback receives after every iteration (and after each validation/save)."""

    iteration: int
    total: int
    loss: float  # exponential moving average of the training L1 loss (what to display)
    step_loss: float  # L1 loss of this iteration's batch
    lr: float
    its_per_sec: float  # measured over this session (excludes validation/saving time)
    eta_s: float
    val_psnr: float | None  # last validation PSNR (Y, border = scale, as hat bench), EMA weights
    event: Literal["step", "val", "save"] = "step"


@dataclass
class TrainResult:
    out: Path
    state: Path
    iterations: int
    val_psnr: float | None
    wall_s: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, val PSNR)


def state_path_for(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.state.pth")


# --------------------------------------------------------------------------- data


def list_images(dirs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every image under the folders (recursively), in path order."""
    files: list[Path] = []
    for folder in dirs:
        found = sorted(images_in(folder, recursive=True))
        if not found:
            raise ConfigError(f"--hr {folder}: no images found (PNG, JPEG, ... in it or its subfolders)")
        files += found
    return files


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8: grey repeated to three channels (as hat bench feeds models), alpha dropped, and
    16-bit pixels rounded to 8 bits (:func:`hat_cli.pixels.to_8bit`): what is learnt is 8-bit SR,
    so a 16-bit file is good training data once rounded (``hat bench`` refuses it instead)."""
    picture = read_picture(Path(path))
    frame = picture.frames[0]
    colour = frame[..., :-1] if picture.has_alpha else frame
    return grey_to_rgb(to_8bit(np.ascontiguousarray(colour)))


class PatchSampler:
    """Holds (HR, LR) uint8 pairs in memory and draws aligned random patches with augmentation.

    ``on_unreadable``: called with the error of each file that cannot be read, which is then
    skipped (one stray file should not stop a run); without it such a file is raised.
    """

    def __init__(
        self,
        files: Sequence[Path],
        scale: int,
        patch_size: int,
        on_unreadable: Callable[[InputImageError], None] | None = None,
    ) -> None:
        if patch_size % scale:
            raise ConfigError(f"patch size {patch_size} (HR) must be a multiple of the scale {scale}")
        self.scale, self.hr_patch, self.lr_patch = scale, patch_size, patch_size // scale
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for path in files:
            try:
                hr = mod_crop(read_rgb(path), scale)
            except InputImageError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(exc)
                continue
            if min(hr.shape[:2]) < patch_size:
                continue  # too small for one patch; the paper's crops skip these too
            self.pairs.append((hr, make_lr(hr, scale)))
        if not self.pairs:
            raise ConfigError(f"no training image is at least {patch_size}x{patch_size} (the HR patch size)")

    def batch(self, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(LR, HR) float batches in [0, 1]: (B, 3, p, p) and (B, 3, p*s, p*s)."""
        s, lp = self.scale, self.lr_patch
        lrs, hrs = [], []
        picks = torch.randint(len(self.pairs), (size,), generator=gen).tolist()
        for idx in picks:
            hr, lr = self.pairs[idx]
            y = int(torch.randint(lr.shape[0] - lp + 1, (1,), generator=gen))
            x = int(torch.randint(lr.shape[1] - lp + 1, (1,), generator=gen))
            lr_p = lr[y : y + lp, x : x + lp]
            hr_p = hr[y * s : (y + lp) * s, x * s : (x + lp) * s]
            hflip, vflip, rot = torch.randint(2, (3,), generator=gen).tolist()
            for flag, op in ((hflip, np.fliplr), (vflip, np.flipud), (rot, _transpose)):
                if flag:
                    lr_p, hr_p = op(lr_p), op(hr_p)
            lrs.append(lr_p)
            hrs.append(hr_p)
        return torch.stack([to_tensor(p) for p in lrs]), torch.stack([to_tensor(p) for p in hrs])


def _transpose(img: np.ndarray) -> np.ndarray:
    return img.transpose(1, 0, 2)


def load_training_data(options: TrainOptions, warn: Warn) -> PatchSampler:
    """The sampler over every usable ``--hr`` image: unreadable files are skipped and named in one
    ``warn`` line; folders with nothing usable are one error naming them."""
    files = list_images(options.hr_dirs)
    skipped: list[InputImageError] = []
    try:
        sampler = PatchSampler(files, options.scale, options.patch_size, skipped.append)
    except ConfigError as exc:
        raise _nothing_usable(options.hr_dirs, len(files), skipped, exc) from None
    if skipped:
        warn(f"--hr: skipped {len(skipped)} unreadable image(s): " + "; ".join(map(str, skipped)))
    return sampler


def _nothing_usable(
    dirs: Sequence[str | os.PathLike[str]], found: int, skipped: list[InputImageError], exc: ConfigError
) -> HatError:
    """The one error line of training folders without a usable image (the skipped ones folded in)."""
    folders = " ".join(map(str, dirs))
    if len(skipped) == found:
        return InputImageError(f"--hr {folders}: none of the {found} image(s) can be read, e.g. {skipped[0]}")
    note = f"; {len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}" if skipped else ""
    return ConfigError(f"--hr {folders}: {exc}{note}")


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def upscale_uint8(model: nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    """Whole-image SR of a uint8 HxWx3 array, rounded to uint8 like a saved PNG (the pixel layer)."""
    return quantize(model(to_tensor(lr)[None].to(device))[0])


def validate(
    model: nn.Module,
    val_hr: str | os.PathLike[str] | Sequence[ImagePair],
    scale: int,
    device: torch.device,
) -> float:
    """Mean PSNR (Y channel, ``scale`` border pixels cropped) through :func:`hat_cli.evaluation.run_bench`,
    so the number is exactly what ``hat bench`` prints for these weights. ``val_hr``: a folder, or
    the pairs :func:`check_validation` returned."""
    was_training = model.training
    model.eval()
    try:
        pairs = pair_images(val_hr, None, scale) if isinstance(val_hr, str | os.PathLike) else list(val_hr)
        result = run_bench(pairs, scale, {"model": lambda lr: upscale_uint8(model, lr, device)})
    finally:
        model.train(was_training)
    return result.models[0].mean.psnr


def check_validation(val_hr: str | os.PathLike[str], scale: int) -> list[ImagePair]:
    """The validation pairs, each read, downscaled and scored once now with a stand-in model (pixel
    repetition): a file validation would fail on fails before training, in one line naming it,
    instead of after it. Costs one scoring pass, no network."""
    where = f"--val-hr {val_hr}"
    try:
        pairs = pair_images(val_hr, None, scale).pairs
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not pairs:
        raise ConfigError(f"{where}: no images found (PNG, JPEG, ...); give a folder of HR validation images")
    result = run_bench(pairs, scale, {"check": lambda lr: lr.repeat(scale, 0).repeat(scale, 1)}, keep_going=True)
    if result.failures:
        failure = result.failures[0]
        path = next(p.hr for p in pairs if p.name == failure.name)
        reason = failure.error.removeprefix(f"{failure.name}: ").removeprefix(f"{path}: ")
        raise InputImageError(f"--val-hr {path}: {reason}")
    return pairs


# --------------------------------------------------------------------------- model setup


def _init_weights(init: str | os.PathLike[str], scale: int) -> tuple[dict[str, Tensor], HATConfig, str]:
    """Weights and architecture of a checkpoint file, or of a preset whose file is at hand."""
    path = Path(init)
    try:
        is_file = path_kind(path) == "file"
    except OSError as exc:  # a name the file system refuses (too long, ...)
        raise CheckpointError(f"--init {init}: cannot read ({exc.strerror or exc})") from None
    if not is_file:
        if "/" in str(init) or path.suffix.lower() in (".pth", ".pt", ".safetensors"):
            raise CheckpointError(f"{init}: no such checkpoint file")
        registry = load_registry()
        scales = registry.aliases.get(str(init).lower(), {})
        # An alias (hat-s) means its file at the target scale, else its x2 one (the paper starts x3/x4 from x2).
        pick = scale if scale in scales else min(scales, default=None) if len(scales) > 1 else None
        preset = registry.resolve(str(init), pick)
        path = require_checkpoint(preset)
    state, meta = read_checkpoint(path)
    return state, _hat_config(state, meta, path), str(path)


def _hat_config(state: dict[str, Tensor], meta: dict[str, Any], path: Path) -> HATConfig:
    family, config = identify(state, meta, path)
    if not isinstance(config, HATConfig):
        raise ConfigError(f"{path}: a {family.title} checkpoint; hat train trains HAT networks")
    return config


_LIST_KEYS = ("depths", "num_heads")
_FIELD_DEFAULTS = HATConfig().to_dict()
# Bounds on a fresh architecture. HAT-L, the largest official HAT, has 40.8 M parameters, embed_dim
# 180, 12 groups of 6 blocks, 6 heads, mlp_ratio 2 and num_feat 64: the bounds are far above it and
# far below sizes (embed_dim=3000000, depths=2x99999999999) that would try to allocate terabytes.
MAX_TRAIN_PARAMS = 200_000_000
MAX_GROUPS = 32
MAX_BLOCKS = 256
_ARCH_LIMITS: dict[str, float] = {"embed_dim": 2048, "num_feat": 1024, "mlp_ratio": 16.0}
MAX_HEADS = 64


def _parse_list(key: str, text: str) -> tuple[int, ...]:
    """``2x3`` (VALUExCOUNT: three groups of two) or ``2/4/2``; the count is bounded before the
    tuple is built."""
    value, sep, count = text.partition("x")
    try:
        if not sep:
            return tuple(int(v) for v in text.split("/"))
        number, groups = int(value), int(count)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a list of whole numbers such as 2x3 or 2/4/2") from None
    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"{key}={text!r} asks for {groups} groups; use 1 to {MAX_GROUPS}")
    return (number,) * groups


def _parse_value(key: str, text: str) -> Any:
    """``text`` as the type of :class:`HATConfig`'s field ``key`` (ValueError saying what is
    expected); an unknown key keeps its text, for the unknown-keys error."""
    if key in _LIST_KEYS:
        return _parse_list(key, text)
    default = _FIELD_DEFAULTS.get(key)
    expected = {bool: "true or false", int: "a whole number", float: "a number"}.get(type(default))
    try:
        if isinstance(default, bool):
            return {"true": True, "false": False}[text.lower()]
        if isinstance(default, int | float):
            return type(default)(text)
    except (KeyError, ValueError):
        raise ValueError(f"{key}={text!r} is not {expected}") from None
    return text


def parse_arch(spec: str, scale: int = 4) -> HATConfig:
    """An architecture from a string: an optional family or preset name, then ``key=value`` pairs.

    ``"hat-tiny"``, ``"hat-s,depths=4x6"`` or ``"embed_dim=48,depths=2x3,num_heads=4x3,window_size=8"``.
    Keys are :class:`HATConfig` fields. Lists: ``VALUExCOUNT`` (``2x3`` = three groups of two blocks)
    or ``/``-separated (``2/4/2``). Without a name the base is the default (full-size) HAT; when only
    ``depths`` changes length, ``num_heads`` follows it. Bounded by :func:`check_arch`.
    """
    base: dict[str, Any] = HATConfig().to_dict()
    overrides: dict[str, Any] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "=" not in part:
            if i:
                raise ConfigError(f"--arch: {part!r} must be key=value (a family/preset name goes first)")
            base = _named_arch(part)
            continue
        key, text = (t.strip() for t in part.split("=", 1))
        try:
            overrides[key] = _parse_value(key, text)
        except ValueError as exc:
            raise ConfigError(f"--arch {spec!r}: {exc}") from None
    if "depths" in overrides and "num_heads" not in overrides:
        overrides["num_heads"] = (base["num_heads"][0],) * len(overrides["depths"])
    try:
        config = HATConfig.from_dict({**base, **overrides, "upscale": scale})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--arch {spec!r}: {exc}") from exc
    if config.extra:
        raise ConfigError(f"--arch: unknown keys {sorted(config.extra)}")
    check_arch(config, f"--arch {spec!r}")
    return config


def check_arch(config: HATConfig, where: str = "--arch") -> None:
    """A fresh architecture the trainer can build and feed: RGB in, the pixel-shuffle head, and
    sizes within the bounds above (checked without torch, before any tensor is allocated)."""
    if config.in_chans != 3:
        raise ConfigError(f"{where}: in_chans {config.in_chans}: the trainer feeds RGB patches, so it must be 3")
    if config.upsampler != "pixelshuffle":
        raise ConfigError(f"{where}: upsampler {config.upsampler!r}: only 'pixelshuffle' is supported")
    for key, limit in _ARCH_LIMITS.items():
        if getattr(config, key) > limit:
            raise ConfigError(f"{where}: {key} {getattr(config, key)} is over the limit of {limit:g}")
    sizes = (
        ("groups", len(config.depths), MAX_GROUPS),
        ("blocks", sum(config.depths), MAX_BLOCKS),
        ("heads", max(config.num_heads), MAX_HEADS),
    )
    for what, value, limit in sizes:
        if value > limit:
            raise ConfigError(f"{where}: {value} {what} is over the limit of {limit}")
    if config.mlp_hidden < 1:
        raise ConfigError(
            f"{where}: mlp_ratio {config.mlp_ratio} leaves no MLP channels of embed_dim {config.embed_dim}"
        )
    if config.num_params > MAX_TRAIN_PARAMS:
        raise ConfigError(
            f"{where}: {config.num_params / 1e6:,.0f} M parameters is over the limit of "
            f"{MAX_TRAIN_PARAMS / 1e6:.0f} M (HAT-L has 40.8 M)"
        )


def _named_arch(name: str) -> dict[str, Any]:
    """Hyper-parameters of a built-in family (``hat-tiny``) or of a HAT preset/alias (``hat-s``)."""
    families = tomllib.loads(builtin_registry_text()).get("families", {})
    by_lower = {k.lower(): v for k, v in families.items()}
    family = by_lower.get(name.lower())
    if family is not None and family.get("arch", "hat") != "hat":
        raise ConfigError(f"--arch {name!r}: not a HAT model ({family['arch']}); hat train trains HAT networks")
    if family is not None:
        return {**HATConfig().to_dict(), **family}
    registry = load_registry()
    scales = registry.aliases.get(name.lower(), {})
    try:
        config = registry.resolve(name, min(scales) if scales else None).config
    except ConfigError as exc:
        raise ConfigError(f"--arch {name!r}: {exc}") from None
    if not isinstance(config, HATConfig):
        raise ConfigError(f"--arch {name!r}: not a HAT model ({type(config).__name__}); hat train trains HAT networks")
    return config.to_dict()


def build_training_model(options: TrainOptions) -> tuple[HAT, str | None]:
    """A fresh or initialised HAT at ``options.scale``; the second item says where weights came from.

    Fine-tuning across scales (the paper's x2 -> x3/x4) keeps every tensor whose shape still
    matches and leaves the upsampler freshly initialised.
    """
    if options.init is not None:
        state, config, source = _init_weights(options.init, options.scale)
        check_arch(config, f"--init {options.init}")  # a 1-channel file, say: the trainer feeds RGB
        if config.upscale != options.scale:
            config = replace(config, upscale=options.scale)
        model = HAT(config)
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(kept, strict=False)
        return model, source
    config = options.config or HATConfig()
    check_arch(config)
    if config.upscale != options.scale:
        config = replace(config, upscale=options.scale)
    return HAT(config), None


def make_scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions) -> torch.optim.lr_scheduler.LambdaLR:
    total, warm = max(options.iters, 1), options.warmup_iters
    steps = sorted(int(f * total) if f < 1 else int(f) for f in options.milestones)

    def factor(it: int) -> float:
        if it < warm:
            return (it + 1) / warm
        if options.schedule == "step":
            return 0.5 ** sum(it >= m for m in steps)
        progress = min(1.0, (it - warm) / max(1, total - warm))
        floor = options.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


# --------------------------------------------------------------------------- checkpoints


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


@dataclass
class _Run:
    options: TrainOptions
    model: HAT
    ema: HAT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    iteration: int = 0
    loss_avg: float | None = None
    last_loss: float = 0.0
    val_psnr: float | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0  # training wall time over all sessions (resumes add up)
    init_source: str | None = None

    def meta(self) -> dict[str, Any]:
        return {
            "train": {
                **self.options.hyper_parameters(),
                "iterations_done": self.iteration,
                "val_psnr": self.val_psnr,
                "wall_s": round(self.wall_s, 1),
                "init_source": self.init_source,
            }
        }

    def save(self, out: Path, state_path: Path) -> None:
        ema_state, params = _cpu_state(self.ema), _cpu_state(self.model)
        config, meta = self.model.config, self.meta()
        save_checkpoint(
            state_path, ema_state, config, params=params, extra_meta=meta, extra={"train_state": self.state()}
        )
        save_checkpoint(out, ema_state, config, params=params, extra_meta=meta)

    def state(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs."""
        return {
            "version": STATE_VERSION,
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data_rng": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loss_avg": self.loss_avg,
            "val_psnr": self.val_psnr,
            "history": [list(h) for h in self.history],
            "wall_s": self.wall_s,
        }

    def restore(self, data: Mapping[str, Any], path: Path) -> None:
        """Continue from a training state file's contents (:func:`_read_resume`). Every entry is
        checked before use: a damaged or foreign file is one error naming it, not a crash now or at
        the first step."""
        where = f"--resume {path}"
        try:
            self.model.load_state_dict(tensors(data, "params"))
            self.ema.load_state_dict(tensors(data, "params_ema"))
        except (BadState, RuntimeError) as exc:  # RuntimeError: torch's shape and key mismatches
            raise CheckpointError(f"{where}: weights do not match the architecture: {first_line(exc)}") from exc
        st = data["train_state"]
        version = st.get("version") if isinstance(st, Mapping) else STATE_VERSION  # not a table: damaged, below
        if version != STATE_VERSION:
            raise CheckpointError(
                f"{where}: training state version {version!r}, but this hat train reads version {STATE_VERSION}; "
                f"fine-tune from its weights with --init {path} instead"
            )
        try:
            checked = checked_state(st, self.optimizer, self.scheduler, self.gen)
        except BadState as exc:
            raise _damaged(where, path, exc) from exc
        try:
            self._apply(checked)
        except (RuntimeError, ValueError) as exc:  # what torch's loaders still refuse in a checked state
            raise _damaged(where, path, exc) from exc

    def _apply(self, st: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.gen.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        self.iteration, self.loss_avg, self.val_psnr = st["iteration"], st["loss_avg"], st["val_psnr"]
        self.history, self.wall_s = st["history"], st["wall_s"]


def _damaged(where: str, path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{where}: damaged training state ({first_line(exc)}); start afresh, or fine-tune from its "
        f"weights with --init {path}"
    )


def _read_resume(path: Path) -> tuple[HATConfig, Mapping[str, Any]]:
    """A training state file, read once: the run's architecture and everything it saved."""
    data, meta = read_checkpoint_file(path)
    if not isinstance(data, Mapping) or "train_state" not in data:
        raise CheckpointError(f"--resume {path}: holds no training state (use it with --init to fine-tune instead)")
    return _hat_config(state_dict_of(data, path), meta, path), data


# --------------------------------------------------------------------------- training loop


def check_outputs(out: Path, state_path: Path) -> None:
    """Fail before training, not after it, when the checkpoint files cannot be written."""
    for path in (out, state_path):
        try:
            _check_output(path, out)
        except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on a parent: stat itself fails
            hint = "; choose a shorter name" if exc.errno == errno.ENAMETOOLONG else ""
            raise ConfigError(f"--out {out}: cannot use {path} ({exc.strerror or exc}){hint}") from None


def _check_output(path: Path, out: Path) -> None:
    try:
        mode: int | None = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigError(f"--out {out}: {path} is a folder; give a file name such as {path / 'model.pth'}")
    if mode is not None and not stat.S_ISREG(mode):
        # Saving replaces the target with a new file: a device (/dev/null as root) would be lost.
        raise ConfigError(
            f"--out {out}: {path} exists and is not a regular file (a device, pipe or socket); give another name"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {folder}")
    _check_name_lengths(path, folder)


def _check_name_lengths(path: Path, folder: Path) -> None:
    """The names below the existing ``folder``: stat says ENOENT for a missing parent before it
    says ENAMETOOLONG, so an overlong name would otherwise surface only when saving."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no answer
        limit = 255
    while path != folder and path != path.parent:
        size = len(os.fsencode(path.name))
        if size > limit:
            reason = f"{os.strerror(errno.ENAMETOOLONG)}: {size} bytes, the limit is {limit}"
            raise OSError(errno.ENAMETOOLONG, reason)
        path = path.parent


def _prepare(options: TrainOptions, device: torch.device, warn: Warn) -> tuple[_Run, PatchSampler, list[ImagePair]]:
    """The model (fresh, fine-tuned or resumed), its EMA copy, optimiser, schedule, data and
    validation pairs: everything that can fail on an input fails here, before training."""
    if options.resume is not None:
        # The architecture is the resumed run's, whatever config/init say now.
        config, resumed = _read_resume(Path(options.resume))
        check_arch(config, f"--resume {options.resume}")
        if config.upscale != options.scale:
            raise ConfigError(f"{options.resume} is a x{config.upscale} run, not x{options.scale}")
        model, source = HAT(config), None
    else:
        model, source = build_training_model(options)
    model.to(device).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(options.seed)
    run = _Run(options, model, ema, optimizer, make_scheduler(optimizer, options), gen, init_source=source)
    if options.resume is not None:
        run.restore(resumed, Path(options.resume))
        run.init_source = f"resumed from {options.resume}"
    # The slow reads last: a bad option or resume file fails before the data loads.
    val_pairs = [] if options.val_hr is None else check_validation(options.val_hr, options.scale)
    return run, load_training_data(options, warn), val_pairs


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or is_out_of_memory(exc)


class _Session:
    """One call of :func:`train`: the loop's steps, timing and reporting."""

    def __init__(
        self,
        run: _Run,
        sampler: PatchSampler,
        val_pairs: list[ImagePair],
        device: torch.device,
        progress: Callable[[TrainProgress], None] | None,
    ) -> None:
        self.run, self.sampler, self.val_pairs, self.device, self.progress = run, sampler, val_pairs, device, progress
        self.options = run.options
        self.out, self.state_path = Path(self.options.out), state_path_for(self.options.out)
        self.started, self.iterations, self.step_time = time.perf_counter(), 0, 0.0
        self.wall_base = run.wall_s
        self.saved_at: int | None = None  # iteration of this session's last checkpoint
        self.whole = True  # False while a step updates weights, optimiser and EMA: no save then

    def report(self, event: Literal["step", "val", "save"]) -> None:
        if self.progress is None:
            return
        run, rate = self.run, self.iterations / self.step_time if self.step_time > 0 else 0.0
        left = self.options.iters - run.iteration
        self.progress(
            TrainProgress(
                iteration=run.iteration,
                total=self.options.iters,
                loss=run.loss_avg or 0.0,
                step_loss=run.last_loss,
                lr=run.optimizer.param_groups[0]["lr"],
                its_per_sec=rate,
                eta_s=left / rate if rate > 0 else math.inf,
                val_psnr=run.val_psnr,
                event=event,
            )
        )

    def checkpoint(self) -> None:
        """Both files, whole: Ctrl-C or SIGTERM arriving meanwhile acts once they are written."""
        self.run.wall_s = self.wall_base + time.perf_counter() - self.started
        with signals_deferred():
            self.run.save(self.out, self.state_path)
        self.saved_at = self.run.iteration

    def save_for_error(self) -> str:
        """Save the work of a run an error ends (unless the failed step left it torn, or there is
        none); returns what happened, for the error's line."""
        run = self.run
        if self.saved_at != run.iteration:
            if not self.whole or run.iteration == 0:
                return "no checkpoint saved" if self.saved_at is None else f"{self.out} holds iteration {self.saved_at}"
            self.checkpoint()
        return f"saved {self.out} at iteration {run.iteration}; continue with --resume {self.state_path}"

    def validate(self) -> None:
        """Validation PSNR of the EMA weights; a failure saves the weights first, then ends the run."""
        if self.options.val_hr is None:
            return
        run, failure = self.run, None
        try:
            run.val_psnr = validate(run.ema, self.val_pairs, self.options.scale, self.device)
        except HatError as exc:  # a validation image changed or vanished since it was checked
            failure = type(exc), f"--val-hr: {exc}"
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            what = f"out of memory on {self.device} validating whole images of --val-hr {self.options.val_hr}"
            failure = DeviceOutOfMemory, f"{what}: use smaller validation images, or leave out --val-hr"
        if failure is not None:  # out of the except block: its traceback no longer holds tensors
            kind, message = failure
            raise kind(f"{message} ({self.save_for_error()})")
        run.history.append((run.iteration, run.val_psnr))
        self.report("val")

    def step(self) -> None:
        """One optimiser step on a fresh batch, then the EMA update."""
        run, options, t0 = self.run, self.options, time.perf_counter()
        data_rng = run.gen.get_state()
        try:
            lr_batch, hr_batch = (t.to(self.device) for t in self.sampler.batch(options.batch_size, run.gen))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                sr = run.model(lr_batch)
            loss = (sr.float() - hr_batch).abs().mean()
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except BaseException:
            run.gen.set_state(data_rng)  # nothing changed yet: a resumed run draws this batch again
            raise
        # Weights, schedule, iteration and EMA change together: Ctrl-C/SIGTERM wait for all four (the
        # checkpoint they trigger must be whole), and an error among them leaves whole False: no save.
        self.whole = False
        with signals_deferred():
            run.optimizer.step()
            run.scheduler.step()
            run.iteration += 1
            # Early on the EMA would mostly remember the random init: ramp the decay up.
            update_ema(run.ema, run.model, min(options.ema_decay, (1 + run.iteration) / (10 + run.iteration)))
        self.whole = True
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"loss became {value} at iteration {run.iteration}: lower --lr (nothing saved)")
        run.last_loss = value
        run.loss_avg = value if run.loss_avg is None else 0.98 * run.loss_avg + 0.02 * value
        self.step_time += time.perf_counter() - t0
        self.iterations += 1
        self.report("step")

    def loop(self) -> None:
        run, options = self.run, self.options
        while run.iteration < options.iters:
            self.step()
            if options.val_every and run.iteration % options.val_every == 0:
                self.validate()
            if options.save_every and run.iteration % options.save_every == 0 and run.iteration < options.iters:
                self.checkpoint()
                self.report("save")
        self.checkpoint()  # before the final validation: its failure cannot cost the weights
        if options.val_hr is not None and (not run.history or run.history[-1][0] != run.iteration):
            self.validate()
            self.checkpoint()  # again, with the final PSNR in the metadata
        self.report("save")

    def out_of_memory(self) -> DeviceOutOfMemory:
        """The error of a training step that ran out of memory, after saving what can be saved."""
        self.run.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        o = self.options
        return DeviceOutOfMemory(
            f"out of memory on {self.device} training on {o.batch_size} patches of {o.patch_size}x{o.patch_size} "
            f"pixels: lower --batch-size or --patch-size ({self.save_for_error()})"
        )


def train(
    options: TrainOptions,
    progress: Callable[[TrainProgress], None] | None = None,
    warn: Warn | None = None,
) -> TrainResult:
    """Run (or resume) training; returns where the checkpoint went and the last validation PSNR.

    ``warn`` receives one line per problem that does not stop the run (unreadable training images
    skipped); by default it goes to :func:`warnings.warn`. KeyboardInterrupt saves both files and
    is then re-raised; running out of memory saves them (when the failed step changed nothing) and
    raises :class:`~hat_cli.errors.DeviceOutOfMemory`.
    """
    check_options(options)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    check_outputs(Path(options.out), state_path_for(options.out))
    torch.manual_seed(options.seed)
    run, sampler, val_pairs = _prepare(options, device, warn or _python_warning)
    session = _Session(run, sampler, val_pairs, device, progress)
    out_of_memory = False
    try:
        session.loop()
    except KeyboardInterrupt as exc:
        session.checkpoint()
        exc.checkpoint_saved = True  # type: ignore[attr-defined]  (what the CLI may then say)
        raise
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        out_of_memory = True
    if out_of_memory:  # out of the except block: the failed step's tensors are freed with its traceback
        raise session.out_of_memory()
    return TrainResult(session.out, session.state_path, run.iteration, run.val_psnr, run.wall_s, run.history)


def _python_warning(message: str) -> None:
    warnings.warn(message, stacklevel=3)
