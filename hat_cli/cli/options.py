"""Option types shared by several commands (one definition, one help text)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigError
from .console import StdoutError

if TYPE_CHECKING:
    from ..upscaling import UpscalerBase


class HatCommand(TyperCommand):
    """Every command's class: help with upper-case placeholders only. (Recent Typer versions
    append the Python type to argument names in plain help, ``NAME <str>``; that is switched off.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, typer.core.TyperOption) and hasattr(param, "display_type_rich"):
                param.display_type_rich = _upper_placeholder(param.display_type_rich)  # type: ignore[method-assign]
            if isinstance(param, typer.core.TyperArgument):
                if hasattr(param, "display_type_rich"):
                    param.display_type_rich = _no_type  # type: ignore[method-assign]
                if hasattr(param, "_usage_display_name"):  # "{NAME}" -> "NAME", as click writes it
                    param._usage_display_name = _usage_name(param)  # type: ignore[method-assign]

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return guard_help(super().parse_args, ctx, args)


class HatSubGroup(TyperGroup):
    """A command group under ``hat`` (``hat models``): its help fails as the commands' does."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return guard_help(super().parse_args, ctx, args)


def guard_help(
    parse: Callable[[typer.Context, list[str]], list[str]], ctx: typer.Context, args: list[str]
) -> list[str]:
    """Click writes --help (and --version) while parsing, before any command runs: a closed or full
    stdout then is a :class:`StdoutError` for the error boundary, not click's own exit 1."""
    try:
        return parse(ctx, args)
    except OSError as exc:
        raise StdoutError(exc) from exc


_PLACEHOLDERS = {"int": "N", "int range": "N", "float": "X", "float range": "X", "str": "TEXT", "list[Path]": "DIR"}


def _upper_placeholder(display: Any) -> Any:
    """``<int range>`` -> ``N``, ``<dir>`` -> ``DIR``, ``<y|rgb>`` -> ``[y|rgb]``: click's style."""

    def placeholder(ctx: Any) -> str | None:
        text = display(ctx)
        if not (isinstance(text, str) and text.startswith("<") and text.endswith(">")):
            return text
        inner = text[1:-1]
        if "|" in inner:
            return f"[{inner}]"
        return _PLACEHOLDERS.get(inner, inner.upper())

    return placeholder


def _no_type(ctx: Any = None) -> None:
    return None


def _usage_name(param: Any) -> Any:
    def name() -> str:
        text = param.metavar or (param.name or "").upper()
        text = text if param.required else f"[{text}]"
        return text + ("..." if param.nargs != 1 else "")

    return name


_ORDER_KEY = "hat.model_order"
_MODEL_PARAMS = ("model", "weights")


class ModelOrderCommand(HatCommand):
    """A command taking several ``--model``/``--weights`` (:data:`ModelListOpt`, :data:`WeightsListOpt`):
    records their command-line order, which :func:`model_specs` reads (Typer keeps one list per option)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        _, _, order = self.make_parser(ctx).parse_args(args=list(args))  # the parser consumes its list
        ctx.meta[_ORDER_KEY] = [p.name for p in order if p.name in _MODEL_PARAMS]
        return super().parse_args(ctx, args)


def model_specs(ctx: typer.Context, models: list[str], weights: list[Path]) -> list[tuple[str, str | Path]]:
    """``[("model", name) | ("weights", path)]`` in command-line order (see :class:`ModelOrderCommand`)."""
    order = ctx.meta.get(_ORDER_KEY) or ["model"] * len(models) + ["weights"] * len(weights)
    values = {"model": iter(models), "weights": iter(weights)}
    return [(kind, next(values[kind])) for kind in order]


def open_models(specs: list[tuple[str, str | Path]], **upscaler_options: Any) -> list[tuple[str, UpscalerBase]]:
    """``(unique name, upscaler)`` per spec, in order (``upscaler_options`` go to ``open_upscaler``).

    Names are the upscalers' own; a second file with the same name in another folder is named by its
    path; a model or file given twice is a :class:`ConfigError`.
    """
    from ..api import open_upscaler  # torch: only once there is something to run

    opened: list[tuple[str, UpscalerBase]] = []
    names: set[str] = set()
    files: set[Path] = set()
    for kind, value in specs:
        if kind == "weights":
            file = Path(value).resolve()
            if file in files:
                raise ConfigError(f"model {value} is given twice")
            files.add(file)
        upscaler = open_upscaler(**upscaler_options, **{kind: value})
        name = upscaler.name
        if name in names and kind == "weights":  # the same file name in another folder: its path
            name = str(value) + name.removeprefix(Path(value).name)  # keeps --self-ensemble's "+"
        if name in names:
            raise ConfigError(f"model {name} is given twice")
        names.add(name)
        opened.append((name, upscaler))
    return opened


ModelOpt = Annotated[
    Optional[str],  # noqa: UP045  (typer needs Optional at runtime on older versions)
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
        help="Preset name or alias (see 'hat models list'; hat-tiny is bundled), or bicubic; env HAT_MODEL.",
    ),
]
WeightsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--weights",
        "-w",
        metavar="FILE",
        help="Any HAT, HAN or RCAN checkpoint (.pth/.pt/.safetensors); architecture read from it.",
    ),
]
# Repeatable --model/--weights (commands comparing models: use ModelOrderCommand and model_specs).
ModelListOpt = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
        help="Preset name or alias (see 'hat models list'); repeatable.",
        show_default=False,
    ),
]
WeightsListOpt = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        "--weights",
        "-w",
        metavar="FILE",
        help="A checkpoint file; repeatable, mixes with --model in the order given.",
        show_default=False,
    ),
]
ScaleOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--scale",
        "-s",
        metavar="N",
        help="The network's factor (2, 3, 4; HAN/RCAN 8; bicubic any); default 4 where the model has x4, else read from --weights.",
        show_default=False,
    ),
]
PresetScaleOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--scale", "-s", metavar="N", help="Pick an alias's checkpoint by scale: hat-s --scale 4."),
]
# An existing folder argument (--hr, --lr, --val-hr).
FOLDER = dict(exists=True, file_okay=False, dir_okay=True, show_default=False)
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto | cpu | cuda[:N] | mps.")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", metavar="NAME", help="auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16 | fp16.")
]
TileOpt = Annotated[
    str,
    typer.Option(
        "--tile", "-t", metavar="N|auto", help="Tile size in input pixels; 0 = whole image; auto = fit in memory."
    ),
]
ThreadsOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--threads",
        min=1,
        metavar="N",
        help="CPU threads for the network (default: the cores this process may use: affinity, cgroup quota).",
        show_default=False,
    ),
]
GpuOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--gpu",
        "-g",
        min=-1,
        metavar="N",
        help="GPU index (cuda:N), -1 for the CPU; same as --device.",
        show_default=False,
    ),
]
TileOverlapOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--tile-overlap",
        min=0,
        metavar="N",
        help="Input pixels shared by neighbouring tiles (default: 2 windows, >= 32).",
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the network (one graph per tile shape; for GPUs, slow to start)."),
]
SelfEnsembleOpt = Annotated[
    bool,
    typer.Option(
        "--self-ensemble", help="Average over the 8 flips/rotations (x8 compute; +0.05-0.2 dB, as EDSR+/RCAN+)."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also report tiling, device and precision choices.")]
RegistryOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--registry", metavar="FILE", help="Extra registry TOML adding/overriding presets; env HAT_REGISTRY."),
]
ConvScaleOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--conv-scale", metavar="X", help="Override conv_scale for --weights (not stored in tensor shapes)."),
]
ImgRangeOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--img-range", metavar="X", help="Override img_range for --weights (1.0 for all official models)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
OfflineOpt = Annotated[
    bool,
    typer.Option("--offline", help="Never touch the network: fail if the checkpoint is not cached; env HAT_OFFLINE=1."),
]


def parse_tile(value: str) -> int | str:
    """``--tile``: ``auto``, or a size in input pixels (0 = whole image)."""
    if value == "auto":
        return value
    try:
        tile = int(value)
    except ValueError:
        tile = -1
    if tile < 0:
        raise ConfigError(f"--tile {value!r}: use auto, 0 (whole image) or a positive size in pixels")
    return tile
