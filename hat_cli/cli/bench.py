"""``hat bench``: PSNR/SSIM of models against a ground-truth folder, scored like the HAT paper."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..baseline import Model
from ..errors import EXIT_SOME_FAILED, ConfigError
from ..evaluation import BenchResult, ImageScore, Pairing, pair_images, run_bench, write_csv
from ..imageio import DEFAULT_MAX_PIXELS
from .console import console, echo, err_console, one_line, print_error, print_line, print_warning
from .options import (
    FOLDER,
    DeviceOpt,
    JsonOpt,
    ModelListOpt,
    PrecisionOpt,
    RegistryOpt,
    SelfEnsembleOpt,
    ThreadsOpt,
    TileOpt,
    WeightsListOpt,
    model_specs,
    open_models,
    parse_tile,
)
from .progress import counter_bar


class ChannelChoice(StrEnum):
    y = "y"
    rgb = "rgb"


def bench(
    ctx: typer.Context,
    hr: Annotated[Path, typer.Option("--hr", help="Ground-truth (HR) images.", **FOLDER)],
    scale: Annotated[int, typer.Option("--scale", "-s", min=1, help="Upscaling factor.", show_default=False)],
    lr: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--lr", help="Input (LR) images, paired by name; default: made from HR with MATLAB bicubic.", **FOLDER
        ),
    ] = None,
    model: ModelListOpt = None,
    weights: WeightsListOpt = None,
    crop_border: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--crop-border",
            min=0,
            help="Pixels cropped from each edge before scoring (default: the scale).",
            show_default=False,
        ),
    ] = None,
    channel: Annotated[
        ChannelChoice, typer.Option("--channel", metavar="y|rgb", help="Score the Y (BT.601 luma) channel or RGB.")
    ] = ChannelChoice.y,
    save_sr: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--save-sr", help="Save SR images as DIR/<model>/<image>.png.", file_okay=False, show_default=False
        ),
    ] = None,
    csv_path: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--csv", help="Write scale,model,image,psnr,ssim,seconds rows to FILE.", dir_okay=False, show_default=False
        ),
    ] = None,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse images larger than this (as hat upscale).")
    ] = DEFAULT_MAX_PIXELS,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    tile: TileOpt = "0",
    self_ensemble: SelfEnsembleOpt = False,
    registry: RegistryOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Score models against ground truth: hat bench --hr Set5/HR --scale 4 --model bicubic --model hat.

    Each --model/--weights is one column, in command-line order; --model bicubic is the MATLAB-bicubic baseline.
    --tile defaults to 0 (whole image); auto also runs the whole image here.
    """
    specs = model_specs(ctx, model or [], weights or [])
    if not specs:
        raise ConfigError("name a model to score: --model NAME, --model bicubic or --weights FILE (repeatable)")
    tile_size = parse_tile(tile)
    pairing = _pairing(hr, lr, scale)
    from ..threads import set_threads  # torch: only once there is something to score

    set_threads(threads)
    opened = open_models(
        specs,
        registry=registry,
        device=device,
        precision=precision,
        tile=0 if tile_size == "auto" else tile_size,
        scale=scale,
        self_ensemble=self_ensemble,  # the bicubic baseline ignores it
    )
    models: dict[str, Model] = {name: upscaler.upscale_array for name, upscaler in opened}
    result = _run(pairing, scale, models, crop_border, channel.value, save_sr, max_pixels)
    if csv_path is not None:
        write_csv(result, csv_path)  # header only when nothing could be scored, as the JSON's empty lists
    if as_json:
        echo(result.to_json())
    elif result.models and result.models[0].images:
        _print_result(result, hr, crop_border, channel.value)
    for failure in [*result.failures, *result.model_failures]:
        print_error(failure.error)
    if result.failures:
        print_line(f"{len(result.failures)} of {len(pairing.pairs)} image pair(s) could not be scored")
    if result.model_failures:
        print_line(f"{len(result.model_failures)} of {len(models)} model(s) failed and were left out")
    if result.failures or result.model_failures:
        raise typer.Exit(EXIT_SOME_FAILED)


def _pairing(hr: Path, lr: Path | None, scale: int) -> Pairing:
    """HR/LR pairs; unpaired files are warned about and skipped, no pairs at all is an error."""
    pairing = pair_images(hr, lr, scale)
    if pairing.unpaired_hr:
        _warn(f"{len(pairing.unpaired_hr)} HR image(s) without an LR image, skipped", pairing.unpaired_hr)
    if pairing.unpaired_lr:
        _warn(f"{len(pairing.unpaired_lr)} LR image(s) without an HR image, skipped", pairing.unpaired_lr)
    if not pairing.pairs and lr is None:
        raise ConfigError(f"no images in {hr}")
    if not pairing.pairs:
        raise ConfigError(f"no image pairs in {hr} and {lr}: LR names must be HR names plus a suffix like _x{scale}")
    return pairing


def _warn(message: str, paths: list[Path]) -> None:
    print_warning(f"{message}: {', '.join(p.name for p in paths)}")


def _run(
    pairing: Pairing,
    scale: int,
    models: dict[str, Model],
    crop_border: int | None,
    channel: str,
    save_sr: Path | None,
    max_pixels: int,
) -> BenchResult:
    """:func:`run_bench` over every pair (a bad pair fails alone) with a progress bar on a terminal."""
    with counter_bar(disable=not err_console.is_terminal) as bar:
        task = bar.add_task("scoring", total=len(pairing.pairs) * len(models))

        def progress(model: str, score: ImageScore) -> None:
            bar.update(task, advance=1, description=f"{model}: {score.name}")

        return run_bench(
            pairing,
            scale,
            models,
            crop_border,
            channel,  # type: ignore[arg-type]
            save_sr,
            progress=progress,
            keep_going=True,
            max_pixels=max_pixels,
        )


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _print_result(result: BenchResult, hr: Path, crop_border: int | None, channel: str) -> None:
    border = result.scale if crop_border is None else crop_border
    # Text, not str: folder, image and model names are shown as they are, never as rich markup.
    table = Table(
        title=Text(one_line(f"{'/'.join(hr.resolve().parts[-2:])} x{result.scale}")),
        caption=f"PSNR (dB) / SSIM on {channel.upper()}, {border}-pixel border cropped",
    )
    table.add_column("image")
    for model in result.models:
        table.add_column(Text(f"{one_line(model.model)}\nPSNR"), justify="right")
        table.add_column("\nSSIM", justify="right")
    per_model = [model.images for model in result.models]
    for row, image in enumerate(per_model[0]):
        cells: list[str | Text] = [Text(one_line(image.name))]
        for images in per_model:
            cells += [_fmt(images[row].psnr, 4), _fmt(images[row].ssim, 4)]
        table.add_row(*cells, end_section=row == len(per_model[0]) - 1)
    table.add_row(
        "mean", *(c for m in result.models for c in (_fmt(m.mean.psnr, 4), _fmt(m.mean.ssim, 4))), style="bold"
    )
    console.print(table)

    timing = Table(title="time in the models", caption="reading and scoring excluded")
    for column in ("model", "images", "seconds", "MP/s"):
        timing.add_column(column, justify="left" if column == "model" else "right")
    for model in result.models:
        timing.add_row(
            Text(one_line(model.model)),
            str(len(model.images)),
            f"{model.seconds_total:.3f}",
            _fmt(model.megapixels_per_second, 2),
        )
    console.print(timing)
