"""Evaluation: score super-resolution models against ground-truth folders, like the HAT paper.

Library half of ``hat bench``: pairing HR and LR files, loading pairs, scoring, results, CSV.
No CLI or terminal code here. Benchmark inputs and the bicubic baseline are in
:mod:`hat_cli.baseline`; folders are walked and images read by :mod:`hat_cli.imagefiles`.

Pairing HR (ground truth) and LR (input) files
----------------------------------------------
Files are matched by name, case-insensitively, ignoring the extension (any image format hat reads;
hidden files are skipped):

1. identical stems pair first (``baby.png`` <-> ``baby.png``);
2. otherwise both stems are reduced to a key by repeatedly removing known trailing suffixes, and
   equal keys pair. From an LR stem: ``x<scale>`` with or without a ``_``/``-``/``.`` before it,
   and ``_LR``, ``_LRBI``, ``_LRBD``, ``_LRDN``, ``_BI``, ``_BD``, ``_DN``, ``_bicubic``; from an
   HR stem: ``_HR``, ``_GT``; from both: ``_SRF_<scale>``. So ``baby.png`` pairs with
   ``baby_LRBI_x4.png``, ``babyx4.png``, ``baby_x4.png`` or ``baby_LR.png``, and
   ``img_001_SRF_4_HR.png`` with ``img_001_SRF_4_LR.png``.

Only the requested scale's ``x<scale>``/``SRF_<scale>`` is removed, so an x2 input is never
paired for an x4 run. HR files whose key is shared with another HR file only pair by identical
stem. Every HR and LR file is used at most once; the rest are reported as unpaired.

A pair's ``name`` (used in results and for saved SR files) is the HR stem without its ``_HR``/
``_GT``/``_SRF_<scale>`` suffixes (``img_001``), or the full stem if that would not be unique, or
the file name when two files share a stem (``a.png``, ``a.jpg``).

Without an LR folder the inputs are generated the way the benchmark files were: HR is cropped to
a multiple of ``scale`` (bottom/right) and shrunk with MATLAB's bicubic ``imresize`` rounded to
uint8 (:func:`make_lr`). With an LR folder, each LR image must be exactly the mod-cropped HR size
divided by ``scale``, else :class:`~hat_cli.errors.InputImageError` names the pair.

Images and models
-----------------
Images are read by :func:`hat_cli.imagefiles.read_rgb8`: RGB, palette, RGBA (alpha dropped) and CMYK
become ``HxWx3`` uint8; 8-bit grayscale stays ``HxW`` uint8; 16-bit and float images are refused;
the ``--max-pixels`` limit of ``hat upscale`` applies.

A model is any callable taking a uint8 ``hxwx3`` RGB LR image and returning a uint8
``(h*scale)x(w*scale)x3`` SR image. Grayscale LR is given to models as three equal channels; when
the HR is grayscale the SR is brought back to one channel (channel mean, rounded) and scored as is,
as BasicSR's metrics treat 2-D images (no luma formula on a gray value).

Scores are :func:`hat_cli.metrics.psnr` / :func:`~hat_cli.metrics.ssim` on the Y channel (or RGB)
with ``crop_border = scale`` unless told otherwise; means are plain averages over images.
``seconds`` times the model call only (not reading, scoring or saving). A pair that cannot be
read or scored fails alone: :func:`run_bench` raises it, or with ``keep_going`` records it in
:attr:`BenchResult.failures` and scores the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .atomic import write_bytes
from .baseline import Model, check_scale, make_lr
from .errors import ConfigError, DeviceOutOfMemory, InputImageError, NonFiniteOutput, OutputError
from .imagefiles import list_images, read_rgb8
from .imageio import DEFAULT_MAX_PIXELS, image_size, save_png
from .metrics import Channel, mod_crop, psnr, ssim
from .pixels import grey_to_rgb, to_levels
from .upscaling import folder_name

__all__ = [
    "BenchResult",
    "ImagePair",
    "ImageScore",
    "MeanScores",
    "ModelFailure",
    "ModelResult",
    "PairFailure",
    "Pairing",
    "check_pairs",
    "load_pair",
    "pair_images",
    "run_bench",
    "write_csv",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class ImagePair:
    """One ground-truth image and its input; ``lr is None`` means "generate it from ``hr``"."""

    name: str
    hr: Path
    lr: Path | None = None


@dataclass(frozen=True)
class Pairing:
    """Result of :func:`pair_images`: the pairs (sorted by HR name) and the files left over."""

    pairs: list[ImagePair]
    unpaired_hr: list[Path]
    unpaired_lr: list[Path]


_SEP = r"[_\-.]"


@functools.cache
def _suffix_patterns(scale: int, role: str) -> tuple[re.Pattern[str], ...]:
    """Trailing-suffix regexes (case-insensitive) stripped from stems of HR (``role='hr'``) or LR files."""
    flags = re.IGNORECASE
    common = [re.compile(rf"{_SEP}srf{_SEP}?{scale}$", flags)]
    if role == "hr":
        return (re.compile(rf"{_SEP}(?:hr|gt)$", flags), *common)
    return (
        re.compile(rf"{_SEP}?x{scale}$", flags),
        re.compile(rf"{_SEP}(?:lr|lrbi|lrbd|lrdn|bi|bd|dn|bicubic)$", flags),
        *common,
    )


def _strip_suffixes(stem: str, scale: int, role: str) -> str:
    """``stem`` without its trailing role/scale suffixes, case kept (``img_001_SRF_4_HR`` -> ``img_001``)."""
    patterns = _suffix_patterns(scale, role)
    changed = True
    while changed:
        changed = False
        for pattern in patterns:
            stripped = pattern.sub("", stem)
            if stripped and stripped != stem:  # never strip a name down to nothing
                stem, changed = stripped, True
    return stem


def _name_key(stem: str, scale: int, role: str) -> str:
    return _strip_suffixes(stem, scale, role).lower()


def _display_names(hr_files: Sequence[Path], scale: int) -> dict[Path, str]:
    """Result names: HR stems without ``_HR``/``_SRF_<s>``; the full stem where two would be equal,
    and the file name where two files share a stem (``a.png``, ``a.jpg``)."""
    names = {p: _strip_suffixes(p.stem, scale, "hr") for p in hr_files}
    for fallback in (lambda p: p.stem, lambda p: p.name):
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name.lower()] = counts.get(name.lower(), 0) + 1
        names = {p: name if counts[name.lower()] == 1 else fallback(p) for p, name in names.items()}
    return names


def pair_images(hr_dir: PathLike, lr_dir: PathLike | None, scale: int) -> Pairing:
    """Pair the images of ``hr_dir`` with those of ``lr_dir`` by name (rules in the module docstring).

    With ``lr_dir=None`` every HR image becomes a pair with a generated input.
    """
    check_scale(scale)
    hr_files = list_images(hr_dir)
    names = _display_names(hr_files, scale)
    if lr_dir is None:
        return Pairing([ImagePair(names[p], p, None) for p in hr_files], [], [])
    lr_files = list_images(lr_dir)
    matched = _match(hr_files, lr_files, scale)
    used_lr = set(matched.values())
    pairs = [ImagePair(names[hr], hr, matched[hr]) for hr in hr_files if hr in matched]
    unpaired_hr = [hr for hr in hr_files if hr not in matched]
    unpaired_lr = [lr for lr in lr_files if lr not in used_lr]
    return Pairing(pairs, unpaired_hr, unpaired_lr)


def _match(hr_files: Sequence[Path], lr_files: Sequence[Path], scale: int) -> dict[Path, Path]:
    """HR -> LR: identical stems first, then equal keys (each file used at most once)."""
    by_stem: dict[str, Path] = {}
    by_key: dict[str, list[Path]] = {}
    for hr in hr_files:
        by_stem.setdefault(hr.stem.lower(), hr)
        by_key.setdefault(_name_key(hr.stem, scale, "hr"), []).append(hr)

    matched: dict[Path, Path] = {}  # HR -> LR
    used_lr: set[Path] = set()
    # Two passes so that an identical stem is never taken by a looser key match of another file.
    for lr in lr_files:
        hr = by_stem.get(lr.stem.lower())
        if hr is not None and hr not in matched:
            matched[hr] = lr
            used_lr.add(lr)
    for lr in lr_files:
        if lr in used_lr:
            continue
        candidates = by_key.get(_name_key(lr.stem, scale, "lr"), [])
        if len(candidates) == 1 and candidates[0] not in matched:
            matched[candidates[0]] = lr
            used_lr.add(lr)
    return matched


# --------------------------------------------------------------------------- images


def check_pairs(
    pairs: Pairing | Sequence[ImagePair], scale: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[ImagePair], list[InputImageError]]:
    """Split ``pairs`` into those that can be scored and one :class:`InputImageError` per other pair.

    Reads file headers only: an unreadable or too large HR or LR, an HR smaller than the scale, or a
    given LR that is not exactly the mod-cropped HR size / ``scale`` makes a pair fail.
    """
    check_scale(scale)
    good, failed = _split_pairs(pairs.pairs if isinstance(pairs, Pairing) else pairs, scale, max_pixels)
    return good, [error for _, error in failed]


def _split_pairs(
    pairs: Sequence[ImagePair], scale: int, max_pixels: int
) -> tuple[list[ImagePair], list[tuple[ImagePair, InputImageError]]]:
    good: list[ImagePair] = []
    failed: list[tuple[ImagePair, InputImageError]] = []
    for pair in pairs:
        try:
            _check_pair(pair, scale, max_pixels)
        except InputImageError as exc:
            failed.append((pair, exc))
        else:
            good.append(pair)
    return good, failed


def _check_pair(pair: ImagePair, scale: int, max_pixels: int) -> None:
    hr_hw = image_size(pair.hr, max_pixels)
    if min(hr_hw) < scale:
        raise InputImageError(f"{pair.name}: HR {pair.hr} ({hr_hw[1]}x{hr_hw[0]}) is smaller than the scale {scale}")
    if pair.lr is not None:
        _check_lr_size(pair, hr_hw, image_size(pair.lr, max_pixels), scale)


def load_pair(pair: ImagePair, scale: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Mod-cropped HR and its LR (read, or made by :func:`hat_cli.baseline.make_lr`), as uint8 arrays.

    Raises :class:`InputImageError` naming the pair when a file cannot be read or a given LR is not
    exactly the cropped HR size / ``scale``.
    """
    try:
        hr = mod_crop(read_rgb8(pair.hr, max_pixels), scale)
        if pair.lr is None:
            return hr, make_lr(hr, scale)
        lr = read_rgb8(pair.lr, max_pixels)
    except InputImageError as exc:
        raise InputImageError(f"{pair.name}: {exc}") from exc
    _check_lr_size(pair, (hr.shape[0], hr.shape[1]), (lr.shape[0], lr.shape[1]), scale)
    return hr, lr


def _check_lr_size(pair: ImagePair, hr_hw: tuple[int, int], lr_hw: tuple[int, int], scale: int) -> None:
    """``hr_hw`` is the HR size, cropped or not: the expectation is computed from its mod-crop."""
    want = (hr_hw[0] // scale, hr_hw[1] // scale)
    if lr_hw != want:
        raise InputImageError(
            f"{pair.name}: LR {pair.lr} is {lr_hw[1]}x{lr_hw[0]} but HR {pair.hr} cropped to a multiple "
            f"of {scale} needs {want[1]}x{want[0]} (width x height)"
        )


# --------------------------------------------------------------------------- results


@dataclass
class ImageScore:
    """Scores of one model on one image; ``seconds`` is the model call alone."""

    name: str
    psnr: float
    ssim: float
    seconds: float


@dataclass
class MeanScores:
    psnr: float
    ssim: float


@dataclass
class ModelResult:
    """One model over the whole set. ``megapixels_per_second`` counts SR output pixels."""

    model: str
    mean: MeanScores
    images: list[ImageScore]
    seconds_total: float
    megapixels_per_second: float


@dataclass
class PairFailure:
    """A pair that could not be read or scored: ``error`` is the one-line message naming it."""

    name: str
    error: str


@dataclass
class ModelFailure:
    """A model that failed on an image (non-finite output, out of memory) and was left out of the
    results, so every column scores the same images: ``error`` names the model and the image."""

    model: str
    image: str
    error: str


@dataclass
class BenchResult:
    """Everything :func:`run_bench` measured; ``dataclasses.asdict`` gives the JSON shape.

    ``{"scale", "models": [{"model", "mean": {"psnr", "ssim"}, "images": [{"name", "psnr", "ssim",
    "seconds"}], "seconds_total", "megapixels_per_second"}], "failures": [{"name", "error"}],
    "model_failures": [{"model", "image", "error"}]}``
    """

    scale: int
    models: list[ModelResult]
    failures: list[PairFailure] = field(default_factory=list)  # pairs not scored (keep_going)
    model_failures: list[ModelFailure] = field(default_factory=list)  # models left out (keep_going)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict/list/str/float tree (``inf`` PSNR of a perfect image stays ``float('inf')``)."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: non-finite numbers (``inf`` PSNR, rate of a zero-time run) become ``null``."""
        return json.dumps(_finite_or_none(self.to_dict()), indent=indent, allow_nan=False)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


CSV_COLUMNS = ("scale", "model", "image", "psnr", "ssim", "seconds")


def write_csv(result: BenchResult, dest: PathLike | TextIO) -> None:
    """One row per (model, image): ``scale,model,image,psnr,ssim,seconds`` with a header.

    ``dest`` is a path (UTF-8, replaced atomically: never a half-written file) or an open text file.
    Floats keep full precision; a perfect image's PSNR is written as ``inf``.
    """
    if hasattr(dest, "write"):
        _write_csv_rows(result, dest)  # an open file: the caller owns it
        return
    buffer = io.StringIO(newline="")
    _write_csv_rows(result, buffer)
    # An undecodable file-name byte (os.fsdecode's surrogate) is written back as that byte, as the
    # JSON output keeps it ("\udcff"): the name in the CSV is the file's own.
    write_bytes(Path(dest), buffer.getvalue().encode("utf-8", "surrogateescape"))


def _write_csv_rows(result: BenchResult, fh: TextIO) -> None:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for model in result.models:
        for img in model.images:
            writer.writerow([result.scale, model.model, img.name, img.psnr, img.ssim, img.seconds])


# --------------------------------------------------------------------------- running


def _resolve_pairs(pairs_or_dirs: Any, scale: int) -> list[ImagePair]:
    if isinstance(pairs_or_dirs, Pairing):
        return list(pairs_or_dirs.pairs)
    if isinstance(pairs_or_dirs, str | os.PathLike):
        return pair_images(pairs_or_dirs, None, scale).pairs
    items = list(pairs_or_dirs)
    if all(isinstance(p, ImagePair) for p in items):  # an empty list too: run_bench reports it
        return items
    if len(items) == 2 and isinstance(items[0], str | os.PathLike):
        lr_dir = items[1]
        if lr_dir is not None and not isinstance(lr_dir, str | os.PathLike):
            raise ConfigError(f"LR folder must be a path or None, got {lr_dir!r}")
        return pair_images(items[0], lr_dir, scale).pairs
    raise ConfigError("run_bench takes a Pairing, a list of ImagePair, an HR folder, or an (HR folder, LR folder) pair")


def _save_png(img: np.ndarray, path: Path) -> None:
    try:
        save_png(img, path)
    except OutputError as exc:
        raise OutputError(f"{path}: cannot save SR image ({exc})") from exc


def _check_sr(sr: Any, model: str, name: str, want_hw: tuple[int, int], scale: int, gray: bool) -> np.ndarray:
    """Validate a model's output and shape it like the HR: ``HxW`` if ``gray`` else ``HxWx3``."""
    if not isinstance(sr, np.ndarray) or sr.dtype != np.uint8:
        kind = sr.dtype if isinstance(sr, np.ndarray) else type(sr).__name__
        raise ConfigError(f"model {model!r} returned {kind} for {name}; models must return a uint8 array")
    if sr.ndim == 3 and sr.shape[2] == 1:
        sr = sr[:, :, 0]
    if sr.shape[:2] != want_hw or sr.ndim not in (2, 3) or (sr.ndim == 3 and sr.shape[2] != 3):
        raise ConfigError(
            f"model {model!r} returned shape {sr.shape} for {name}, expected {want_hw[0]}x{want_hw[1]}x3 "
            f"(is it an x{scale} model?)"
        )
    if gray and sr.ndim == 3:
        return to_levels(sr.mean(axis=2))  # gray ground truth: score one channel
    if not gray and sr.ndim == 2:
        raise ConfigError(f"model {model!r} returned a single-channel image for RGB {name}")
    return sr


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


def run_bench(
    pairs_or_dirs: Pairing | Sequence[ImagePair] | PathLike | tuple[PathLike, PathLike | None],
    scale: int,
    models: Mapping[str, Model],
    crop_border: int | None = None,
    channel: Channel = "y",
    save_sr_dir: PathLike | None = None,
    *,
    progress: Callable[[str, ImageScore], None] | None = None,
    keep_going: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> BenchResult:
    """Score every model on every pair.

    Args:
        pairs_or_dirs: a :class:`Pairing` or list of :class:`ImagePair`; or an HR folder (inputs
            generated); or ``(hr_dir, lr_dir)`` (``lr_dir`` may be None). Folders are paired with
            :func:`pair_images` and unpaired files are skipped silently - call it yourself to
            report them.
        scale: integer upscaling factor.
        models: name -> callable, uint8 ``hxwx3`` LR -> uint8 ``(h*scale)x(w*scale)x3`` SR.
            Results keep this order.
        crop_border: pixels dropped from each edge before scoring; default ``scale``.
        channel: ``'y'`` (paper convention) or ``'rgb'``.
        save_sr_dir: if given, each SR image is saved as ``<save_sr_dir>/<model>/<name>.png``
            (model name with unsafe characters replaced by ``_``).
        progress: called as ``progress(model_name, image_score)`` after each scored image.
        keep_going: a pair that cannot be read or scored is recorded in
            :attr:`BenchResult.failures` and the rest are scored, and a model that fails on an image
            (non-finite output, out of memory) in :attr:`BenchResult.model_failures`, its column left
            out; otherwise either is raised.
        max_pixels: refuse images larger than this (decompression bombs).

    Every pair is checked with :func:`check_pairs` (file headers only) before any model runs, so a
    wrong folder fails fast with :class:`InputImageError`. A model returning a wrong dtype or size raises
    :class:`ConfigError`. Images are loaded once and run through all models in turn.
    """
    check_scale(scale)
    scale = int(scale)
    border = _check_options(models, channel, crop_border, scale, save_sr_dir)
    pairs = _resolve_pairs(pairs_or_dirs, scale)
    if not pairs:
        raise ConfigError("no image pairs to benchmark")
    pairs, failed = _split_pairs(pairs, scale, max_pixels)
    if failed and not keep_going:
        raise failed[0][1]
    failures = [PairFailure(pair.name, str(error)) for pair, error in failed]
    scorer = _Scorer(scale, models, border, channel, save_sr_dir, progress, keep_going)
    for pair in pairs:
        try:
            scorer.score(pair, *load_pair(pair, scale, max_pixels))
        except InputImageError as exc:
            if not keep_going:
                raise
            failures.append(PairFailure(pair.name, str(exc)))
    return BenchResult(
        scale=scale, models=scorer.results(), failures=failures, model_failures=list(scorer.failed_models.values())
    )


def _check_options(
    models: Mapping[str, Model], channel: str, crop_border: int | None, scale: int, save_sr_dir: PathLike | None
) -> int:
    """The crop border, after checking the options that do not depend on the images."""
    if not models:
        raise ConfigError("no models to benchmark")
    if channel not in ("y", "rgb"):
        raise ConfigError(f"channel must be 'y' or 'rgb', got {channel!r}")
    border = scale if crop_border is None else int(crop_border)
    if border < 0:
        raise ConfigError(f"crop_border must be >= 0, got {crop_border}")
    names = list(models)
    if save_sr_dir is not None and len({folder_name(n) for n in names}) < len(names):
        raise ConfigError(f"model names {names} would share an SR folder under {save_sr_dir}")
    return border


class _Scorer:
    """Runs each model on a loaded pair, scores and optionally saves the SR image."""

    def __init__(
        self,
        scale: int,
        models: Mapping[str, Model],
        border: int,
        channel: Channel,
        save_sr_dir: PathLike | None,
        progress: Callable[[str, ImageScore], None] | None,
        keep_going: bool = False,
    ) -> None:
        self.scale, self.models, self.border, self.channel, self.progress = scale, models, border, channel, progress
        self.out_root = Path(save_sr_dir) if save_sr_dir is not None else None
        self.scores: dict[str, list[ImageScore]] = {name: [] for name in models}
        self.megapixels = 0.0
        self.keep_going = keep_going
        self.failed_models: dict[str, ModelFailure] = {}

    def score(self, pair: ImagePair, hr: np.ndarray, lr: np.ndarray) -> None:
        """Every model on one pair. All models are scored before any score is kept, so a pair that
        fails part-way (too small to score) leaves the columns aligned."""
        lr_rgb = np.ascontiguousarray(grey_to_rgb(lr))
        hw = (hr.shape[0], hr.shape[1])
        scored: list[tuple[str, ImageScore]] = []
        for name in [model for model in self.models if model not in self.failed_models]:
            try:
                scored.append((name, self._one(name, pair, hr, lr_rgb, hw)))
            except (NonFiniteOutput, DeviceOutOfMemory) as exc:  # the model's fault, not the pair's
                if not self.keep_going:
                    raise
                message = f"{name} on {pair.name}: {exc}; {name} is left out of the results"
                self.failed_models[name] = ModelFailure(name, pair.name, message)
        self.megapixels += hw[0] * hw[1] / 1e6
        for name, score in scored:
            self.scores[name].append(score)
            if self.progress is not None:
                self.progress(name, score)

    def _one(self, name: str, pair: ImagePair, hr: np.ndarray, lr_rgb: np.ndarray, hw: tuple[int, int]) -> ImageScore:
        start = time.perf_counter()
        sr = self.models[name](lr_rgb.copy())  # a model may write into its input
        seconds = time.perf_counter() - start
        sr = _check_sr(sr, name, pair.name, hw, self.scale, gray=hr.ndim == 2)
        if self.out_root is not None:
            _save_png(sr, self.out_root / folder_name(name) / f"{pair.name}.png")
        try:
            return ImageScore(
                name=pair.name,
                psnr=psnr(sr, hr, self.border, self.channel),
                ssim=ssim(sr, hr, self.border, self.channel),
                seconds=seconds,
            )
        except ValueError as exc:  # too small for the crop or the 11x11 SSIM window
            raise InputImageError(f"{pair.name}: cannot score ({exc})") from exc

    def results(self) -> list[ModelResult]:
        """One result per model that scored every image (a failed model's column is left out)."""
        out = []
        for name, images in self.scores.items():
            if name in self.failed_models:
                continue
            total = float(sum(s.seconds for s in images))
            out.append(
                ModelResult(
                    model=name,
                    mean=MeanScores(psnr=_mean(s.psnr for s in images), ssim=_mean(s.ssim for s in images)),
                    images=images,
                    seconds_total=total,
                    megapixels_per_second=self.megapixels / total if total > 0 else float("inf"),
                )
            )
        return out
