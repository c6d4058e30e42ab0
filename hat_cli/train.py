"""Train or fine-tune a HAT on folders of high-resolution images (the HAT paper's recipe).

Data: every HR image (:func:`hat_cli.imagefiles.list_images`, read as 8 bits) is mod-cropped to
the scale and downscaled *once* with :func:`hat_cli.baseline.make_lr` (MATLAB bicubic, rounded to
uint8: bit-identical to the benchmark LR files); each
iteration crops aligned LR/HR patch pairs at random positions, with random flips and 90-degree
rotations. Loss L1, Adam(0.9, 0.99), cosine or step decay, EMA of the weights.

Files: ``out`` is an official-format checkpoint (``params_ema``/``params`` + ``hat_config``
metadata, see :func:`hat_cli.checkpoint.save_checkpoint`); next to it ``<stem>.state.pth`` holds
everything needed to resume (weights, EMA, optimiser, scheduler, iteration, RNG). Both are written
through :func:`hat_cli.checkpoint.save_checkpoint` (atomic, permissions from the umask) every
``save_every`` iterations, at the end, and on Ctrl-C before it propagates. Both paths are checked
before training starts, so no work is lost to an unwritable output.

This module has no CLI dependencies; progress goes to an optional callback.
"""

from __future__ import annotations

import copy
import math
import os
import time
import tomllib
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
from .errors import CheckpointError, ConfigError
from .evaluation import pair_images, run_bench
from .imagefiles import list_images as images_in
from .imagefiles import read_rgb8
from .metrics import mod_crop
from .model import HAT, HATConfig
from .pixels import grey_to_rgb, quantize, to_tensor
from .registry import builtin_registry_text, load_registry
from .store import require_checkpoint

STATE_VERSION = 1

Schedule = Literal["cosine", "step"]


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
            raise ConfigError(f"{folder}: no images found (PNG, JPEG, ... in it or its subfolders)")
        files += found
    return files


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 (grayscale repeated to three channels, as hat bench feeds models)."""
    img = read_rgb8(path)
    return grey_to_rgb(img)


class PatchSampler:
    """Holds (HR, LR) uint8 pairs in memory and draws aligned random patches with augmentation."""

    def __init__(self, files: Sequence[Path], scale: int, patch_size: int) -> None:
        if patch_size % scale:
            raise ConfigError(f"patch size {patch_size} (HR) must be a multiple of the scale {scale}")
        self.scale, self.hr_patch, self.lr_patch = scale, patch_size, patch_size // scale
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for path in files:
            hr = mod_crop(read_rgb(path), scale)
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


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def upscale_uint8(model: nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    """Whole-image SR of a uint8 HxWx3 array, rounded to uint8 like a saved PNG (the pixel layer)."""
    return quantize(model(to_tensor(lr)[None].to(device))[0])


def validate(model: nn.Module, val_hr: str | os.PathLike[str], scale: int, device: torch.device) -> float:
    """Mean PSNR (Y channel, ``scale`` border pixels cropped) through :func:`hat_cli.evaluation.run_bench`,
    so the number is exactly what ``hat bench`` prints for these weights."""
    was_training = model.training
    model.eval()
    try:
        result = run_bench(
            pair_images(val_hr, None, scale), scale, {"model": lambda lr: upscale_uint8(model, lr, device)}
        )
    finally:
        model.train(was_training)
    return result.models[0].mean.psnr


# --------------------------------------------------------------------------- model setup


def _init_weights(init: str | os.PathLike[str], scale: int) -> tuple[dict[str, Tensor], HATConfig, str]:
    """Weights and architecture of a checkpoint file, or of a preset whose file is at hand."""
    path = Path(init)
    if not path.is_file():
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


def _parse_value(key: str, text: str) -> Any:
    if key in _LIST_KEYS:
        if "x" in text:  # VALUExCOUNT: 2x3 -> (2, 2, 2)
            value, count = text.split("x", 1)
            return (int(value),) * int(count)
        return tuple(int(v) for v in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_arch(spec: str, scale: int = 4) -> HATConfig:
    """An architecture from a string: an optional family or preset name, then ``key=value`` pairs.

    ``"hat-tiny"``, ``"hat-s,depths=4x6"`` or ``"embed_dim=48,depths=2x3,num_heads=4x3,window_size=8"``.
    Keys are :class:`HATConfig` fields. Lists: ``VALUExCOUNT`` (``2x3`` = three groups of two blocks)
    or ``/``-separated (``2/4/2``). Without a name the base is the default (full-size) HAT; when only
    ``depths`` changes length, ``num_heads`` follows it.
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
        overrides[key] = _parse_value(key, text)
    if "depths" in overrides and "num_heads" not in overrides:
        overrides["num_heads"] = (base["num_heads"][0],) * len(overrides["depths"])
    try:
        config = HATConfig.from_dict({**base, **overrides, "upscale": scale})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--arch {spec!r}: {exc}") from exc
    if config.extra:
        raise ConfigError(f"--arch: unknown keys {sorted(config.extra)}")
    for key in ("compress_ratio", "squeeze_factor"):
        if config.embed_dim < getattr(config, key):
            raise ConfigError(
                f"--arch: {key} {getattr(config, key)} leaves no channels of embed_dim {config.embed_dim}"
            )
    return config


def _named_arch(name: str) -> dict[str, Any]:
    """Hyper-parameters of a built-in family (``hat-tiny``) or of a preset/alias (``hat-s``)."""
    families = tomllib.loads(builtin_registry_text()).get("families", {})
    by_lower = {k.lower(): v for k, v in families.items()}
    if name.lower() in by_lower:
        return {**HATConfig().to_dict(), **by_lower[name.lower()]}
    registry = load_registry()
    scales = registry.aliases.get(name.lower(), {})
    return registry.resolve(name, min(scales) if scales else None).config.to_dict()


def build_training_model(options: TrainOptions) -> tuple[HAT, str | None]:
    """A fresh or initialised HAT at ``options.scale``; the second item says where weights came from.

    Fine-tuning across scales (the paper's x2 -> x3/x4) keeps every tensor whose shape still
    matches and leaves the upsampler freshly initialised.
    """
    if options.init is not None:
        state, config, source = _init_weights(options.init, options.scale)
        if config.upscale != options.scale:
            config = replace(config, upscale=options.scale)
        model = HAT(config)
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(kept, strict=False)
        return model, source
    config = options.config or HATConfig()
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
        """Continue from a training state file's contents (:func:`_read_resume`)."""
        try:
            self.model.load_state_dict(data["params"])
            self.ema.load_state_dict(data["params_ema"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: weights do not match the architecture: {exc}") from exc
        st = data["train_state"]
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.gen.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        self.iteration = int(st["iteration"])
        self.loss_avg = st["loss_avg"]
        self.val_psnr = st["val_psnr"]
        self.history = [(int(i), float(v)) for i, v in st["history"]]
        self.wall_s = float(st["wall_s"])


def _read_resume(path: Path) -> tuple[HATConfig, Mapping[str, Any]]:
    """A training state file, read once: the run's architecture and everything it saved."""
    data, meta = read_checkpoint_file(path)
    if not isinstance(data, Mapping) or "train_state" not in data:
        raise CheckpointError(f"{path}: holds no training state (use it with init= to fine-tune instead)")
    return _hat_config(state_dict_of(data, path), meta, path), data


# --------------------------------------------------------------------------- training loop


def check_outputs(out: Path, state_path: Path) -> None:
    """Fail before training, not after it, when the checkpoint files cannot be written."""
    for path in (out, state_path):
        if path.is_dir():
            raise ConfigError(f"--out {out}: {path} is a folder; give a file name such as {path / 'model.pth'}")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: cannot write in {folder}")


def _prepare(options: TrainOptions, device: torch.device) -> tuple[_Run, PatchSampler]:
    """The model (fresh, fine-tuned or resumed), its EMA copy, optimiser, schedule and data."""
    if options.resume is not None:
        # The architecture is the resumed run's, whatever config/init say now.
        config, resumed = _read_resume(Path(options.resume))
        if config.upscale != options.scale:
            raise ConfigError(f"{options.resume} is a x{config.upscale} run, not x{options.scale}")
        model, source = HAT(config), None
    else:
        model, source = build_training_model(options)
    sampler = PatchSampler(list_images(options.hr_dirs), options.scale, options.patch_size)
    if options.val_hr is not None:
        pair_images(options.val_hr, None, options.scale)  # fail now, not after the first val_every iterations
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
    return run, sampler


class _Session:
    """One call of :func:`train`: the loop's steps, timing and reporting."""

    def __init__(self, run: _Run, sampler: PatchSampler, device: torch.device, progress) -> None:
        self.run, self.sampler, self.device, self.progress = run, sampler, device, progress
        self.options = run.options
        self.out, self.state_path = Path(self.options.out), state_path_for(self.options.out)
        self.started, self.iterations, self.step_time = time.perf_counter(), 0, 0.0
        self.wall_base = run.wall_s

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

    def validate(self) -> None:
        if self.options.val_hr is not None:
            run = self.run
            run.val_psnr = validate(run.ema, self.options.val_hr, self.options.scale, self.device)
            run.history.append((run.iteration, run.val_psnr))
            self.report("val")

    def step(self) -> None:
        """One optimiser step on a fresh batch, then the EMA update."""
        run, options, t0 = self.run, self.options, time.perf_counter()
        lr_batch, hr_batch = (t.to(self.device) for t in self.sampler.batch(options.batch_size, run.gen))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            sr = run.model(lr_batch)
        loss = (sr.float() - hr_batch).abs().mean()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.iteration += 1
        # Early on the EMA would mostly remember the random init: ramp the decay up.
        update_ema(run.ema, run.model, min(options.ema_decay, (1 + run.iteration) / (10 + run.iteration)))
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
        if options.val_hr is not None and (not run.history or run.history[-1][0] != run.iteration):
            self.validate()
        self.checkpoint()
        self.report("save")


def train(options: TrainOptions, progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Run (or resume) training; returns where the checkpoint went and the last validation PSNR.

    KeyboardInterrupt saves both files and is then re-raised.
    """
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    check_outputs(Path(options.out), state_path_for(options.out))
    torch.manual_seed(options.seed)
    run, sampler = _prepare(options, device)
    session = _Session(run, sampler, device, progress)
    try:
        session.loop()
    except KeyboardInterrupt as exc:
        session.checkpoint()
        exc.checkpoint_saved = True  # type: ignore[attr-defined]  (what the CLI may then say)
        raise
    return TrainResult(session.out, session.state_path, run.iteration, run.val_psnr, run.wall_s, run.history)
