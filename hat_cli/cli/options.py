"""Option types shared by several commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError

ModelOpt = Annotated[
    Optional[str],  # noqa: UP045  (typer needs Optional at runtime on older versions)
    typer.Option("--model", "-m", help="Preset name or alias (see 'hat models list'); env HAT_MODEL."),
]
WeightsOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--weights", "-w", help="Any HAT checkpoint (.pth/.pt/.safetensors); architecture read from it."),
]
ScaleOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--scale", "-s", help="Upscaling factor (2, 3, 4); read from --weights if omitted."),
]
PresetScaleOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--scale", "-s", help="Pick an alias's checkpoint by scale: hat-s --scale 4."),
]
# An existing folder argument (--hr, --lr, --val-hr).
FOLDER = dict(exists=True, file_okay=False, dir_okay=True, show_default=False)
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N] | mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp32 on CPU, bf16 on GPU) | fp32 | bf16 | fp16.")]
TileOpt = Annotated[
    str, typer.Option("--tile", help="Tile size in input pixels; 0 = whole image; auto = fit in memory.")
]
TileOverlapOpt = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--tile-overlap", min=0, help="Input pixels shared by neighbouring tiles (default: 2 windows, >= 32)."
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
    typer.Option("--registry", help="Extra registry TOML adding/overriding presets; env HAT_REGISTRY."),
]
ConvScaleOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--conv-scale", help="Override conv_scale for --weights (not stored in tensor shapes)."),
]
ImgRangeOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--img-range", help="Override img_range for --weights (1.0 for all official models)."),
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
