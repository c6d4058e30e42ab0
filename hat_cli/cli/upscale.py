"""``hat upscale``: upscale images with a preset or any HAT checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..api import Upscaler, open_upscaler
from ..errors import ConfigError
from ..imageio import default_output_path, read_image, write_image
from .console import console, err_console
from .options import (
    ConvScaleOpt,
    DeviceOpt,
    ImgRangeOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    RegistryOpt,
    ScaleOpt,
    TileOpt,
    TileOverlapOpt,
    VerboseOpt,
    WeightsOpt,
)
from .progress import tile_progress


def parse_tile(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        tile = int(value)
    except ValueError:
        tile = -1
    if tile < 0:
        raise ConfigError(f"--tile {value!r}: use auto, 0 (whole image) or a positive size in pixels")
    return tile


def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image file(s) to upscale.", show_default=False)],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="Output file (one input) or folder; default: <stem>_x<scale>.png beside the input.",
        ),
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    scale: ScaleOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    tile: TileOpt = "auto",
    tile_overlap: TileOverlapOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    registry: RegistryOpt = None,
    conv_scale: ConvScaleOpt = None,
    img_range: ImgRangeOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Upscale images: hat upscale photo.png --scale 4."""
    tile_size = parse_tile(tile)
    upscaler = open_upscaler(
        model=model,
        weights=weights,
        scale=scale,
        registry=registry,
        conv_scale=conv_scale,
        img_range=img_range,
        device=device,
        precision=precision,
        tile=tile_size,
        tile_overlap=tile_overlap,
    )
    if output is not None and len(inputs) > 1 and output.suffix:
        raise ConfigError(f"-o {output}: with several inputs, -o must be a folder")
    for path in inputs:
        if output is None:
            target = default_output_path(path, upscaler.scale)
        elif len(inputs) == 1 and output.suffix:
            target = output
        else:
            target = output / default_output_path(path, upscaler.scale).name
        if target.exists() and not overwrite:
            raise ConfigError(f"{target} exists: pass --overwrite to replace it")
        image = read_image(path)
        tiled = isinstance(upscaler, Upscaler)  # not the bicubic baseline
        with tile_progress(path.name, enabled=tiled and not quiet) as progress:
            result = upscaler.upscale(image, progress=progress) if tiled else upscaler.upscale(image)
        if verbose and tiled and upscaler.last_stats is not None:
            err_console.print(f"{path}: {upscaler.last_stats.describe()}", highlight=False, soft_wrap=True)
        write_image(result, target)
        if not quiet:
            console.print(f"{path} -> {target} ({result.width}x{result.height}, {upscaler.name})", highlight=False)
