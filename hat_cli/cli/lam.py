"""``hat lam``: Local Attribution Maps (LAM) of one SR window, for one model or several side by side.

``hat lam IMAGE --model hat-tiny --at X,Y`` attributes the 16x16 SR window whose top-left corner is
at column X, row Y of the SR image to the LR input's pixels and prints the diffusion index (DI). With
``-o DIR`` it writes ``attribution.npy`` ((3, h, w) float32, before abs/normalisation), the
pictures (``input``, ``saliency``, ``blend``, ``kde``, ``kde_blend``, ``sr``, ``strip`` .png) and
``lam.json``; several models go to ``DIR/<model>/`` with one ``comparison.png`` in ``DIR``.
``--json`` prints one JSON object per model, one per line (JSON Lines), in the order given.

The image is read and checked before any model is opened (or downloaded). Exit status (one line on
stderr): 0 done; 1 unreadable image, or one whose channels the model cannot take; 2 bad option (a
window outside the SR image, an image too small for the blur kernel, ``--model bicubic``, models of
different scales, an unknown model or bad checkpoint); 4 download failed (see ``EXIT_CODES``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import typer

from ..atomic import write_bytes
from ..errors import ConfigError, ImageTooSmall, InputImageError
from ..imagefiles import path_kind
from ..imageio import DEFAULT_MAX_PIXELS, read_picture
from ..pixels import grey_to_rgb, to_8bit
from ..upscaling import folder_name
from .console import echo, err_console, print_line
from .options import (
    DeviceOpt,
    JsonOpt,
    ModelListOpt,
    OfflineOpt,
    RegistryOpt,
    ScaleOpt,
    ThreadsOpt,
    WeightsListOpt,
    model_specs,
    open_models,
)
from .progress import counter_bar, download_progress

if TYPE_CHECKING:
    from PIL import Image

    from ..lam import LamResult, Window
    from ..lam_pictures import LamPictures


@dataclass
class Analysed:
    """One model's LAM and where it went."""

    name: str
    scale: int
    device: str
    precision: str
    result: LamResult
    pictures: LamPictures | None = None
    folder: Path | None = None

    def to_json(self, image: Path) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.name, "image": str(image), "scale": self.scale}
        data |= self.result.to_json()
        data |= {"device": self.device, "precision": self.precision}
        if self.folder is not None:
            data["output"] = str(self.folder)
        return data


def parse_at(value: str) -> tuple[int, int]:
    """``"X,Y"`` -> (x, y): the window's top-left corner in SR pixels (column, row)."""
    match = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*", value)
    if match is None:
        raise ConfigError(f"--at {value!r}: use X,Y (column, row of the window's top-left corner in SR pixels)")
    return int(match.group(1)), int(match.group(2))


def lam(
    ctx: typer.Context,
    image: Annotated[
        Path,
        typer.Argument(metavar="IMAGE", help="The LR input image (an HR image with --from-hr).", show_default=False),
    ],
    at: Annotated[
        str,
        typer.Option(
            "--at", metavar="X,Y", help="Top-left corner of the window in SR pixels (column, row).", show_default=False
        ),
    ],
    model: ModelListOpt = None,
    weights: WeightsListOpt = None,
    window: Annotated[int, typer.Option("--window", min=1, help="Side of the analysed SR window in pixels.")] = 16,
    sigma: Annotated[
        float, typer.Option("--sigma", help="Blur of the path's start (Gaussian sigma, LR pixels).")
    ] = 1.2,
    steps: Annotated[int, typer.Option("--steps", help="Steps along the blur path (the official 'fold').")] = 50,
    kernel: Annotated[int, typer.Option("--kernel", help="Side of the Gaussian blur kernel (odd).")] = 9,
    batch: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--batch",
            min=1,
            help="Path steps per forward/backward (default: as many as fit in memory).",
            show_default=False,
        ),
    ] = None,
    from_hr: Annotated[
        bool,
        typer.Option("--from-hr", help="IMAGE is HR: crop to a multiple of the scale, bicubic-downscale (as LAM)."),
    ] = False,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Folder for attribution.npy, the pictures and the strip.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            metavar="NAME",
            help="fp32 (default: the reference numbers) | bf16 | fp16 | auto (bf16 on GPU).",
        ),
    ] = "fp32",
    scale: ScaleOpt = None,
    registry: RegistryOpt = None,
    offline: OfflineOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Local Attribution Map of one SR window: hat lam photo.png --model hat-tiny --at 120,80 -o lam/.

    Prints the diffusion index (DI: the share of input pixels the network uses; higher = wider). Several --model/--weights give one comparison strip, as the HAT paper's figure.

    Exit status: 0 done; 1 unreadable image, or channels the model cannot take; 2 bad option, window outside the SR image, image too small for the kernel, --model bicubic; 4 download failed.
    """
    from ..lam import Window, check_parameters  # torch: not for --help
    from ..threads import set_threads

    x, y = parse_at(at)
    check_parameters(sigma, steps, kernel)
    _check_output(output)
    specs = model_specs(ctx, model or [], weights or [])
    if not specs:
        raise ConfigError("name a model: --model NAME or --weights FILE (repeat to compare several)")
    for kind, value in specs:
        if kind == "model" and str(value).lower() == "bicubic":
            raise ConfigError("--model bicubic: LAM attributes a network's output; bicubic has no network")

    lr = _read_input(image, kernel, from_hr)  # before any model is opened (or downloaded)
    set_threads(threads)
    upscalers = _open_models(specs, scale, registry, device, precision, offline, quiet=as_json)
    lr_picture = None
    if from_hr:
        lr, lr_picture = _lr_from_hr(image, lr, upscalers[0][1].scale, kernel)
    region = Window(x, y, window)
    _check_all(upscalers, lr, region)
    if output is not None:
        _check_folder_names(output, [name for name, _ in upscalers])

    analysed = [
        _analyse(name, upscaler, lr, region, sigma, steps, kernel, batch, show=not as_json)
        for name, upscaler in upscalers
    ]
    if output is not None:
        _write(output, analysed, lr, lr_picture)
    for item in analysed:
        if as_json:
            echo(json.dumps(item.to_json(image)))
        else:
            _report(item)
    if output is not None and not as_json:
        print_line(f"wrote {output}", err=False)


# --------------------------------------------------------------------------- steps


def _open_models(
    specs: list[tuple[str, str | Path]],
    scale: int | None,
    registry: Path | None,
    device: str,
    precision: str,
    offline: bool,
    quiet: bool,
) -> list[tuple[str, Any]]:
    """(unique name, Upscaler) per --model/--weights (bicubic already refused), all of one scale."""
    opened = open_models(
        specs,
        registry=registry,
        device=device,
        precision=precision,
        scale=scale,
        offline=offline,
        progress=download_progress(quiet),
    )
    first_name, first = opened[0]
    for name, upscaler in opened[1:]:
        if upscaler.scale != first.scale:
            raise ConfigError(
                f"{name} is x{upscaler.scale} but {first_name} is x{first.scale}: "
                "compare models of one scale (the window is in SR pixels)"
            )
    return opened


def _read_input(path: Path, kernel: int, from_hr: bool) -> np.ndarray:
    """IMAGE as H x W x C uint8/uint16 (alpha dropped); an LR input is checked against the kernel."""
    picture = read_picture(path, DEFAULT_MAX_PIXELS)
    array = picture.frames[0]
    if picture.has_alpha:
        array = array[:, :, :-1]
    if not from_hr:
        _check_image(path, array, kernel)
    return array


def _check_output(output: Path | None) -> None:
    """-o is a folder: not '-' (nothing goes to stdout here) and not an existing file."""
    if output is None:
        return
    if str(output) == "-":
        raise ConfigError("-o -: hat lam writes a folder of files; name a folder (--json prints the numbers)")
    try:
        kind = path_kind(output)
    except OSError as exc:  # a name too long for the file system, say
        raise ConfigError(f"-o {output}: unusable folder name ({exc.strerror or exc})") from None
    if kind == "file":
        raise ConfigError(f"-o {output}: exists and is not a folder")


def _check_folder_names(output: Path, names: list[str]) -> None:
    """Several models write to -o/<model>/: two names that make one folder would overwrite each other."""
    folders = [folder_name(name) for name in names]
    if len(names) > 1 and len(set(folders)) < len(folders):
        twice = next(folder for folder in folders if folders.count(folder) > 1)
        clashing = [name for name, folder in zip(names, folders, strict=True) if folder == twice]
        raise ConfigError(f"models {', '.join(clashing)} would share the folder {output / twice}: rename a file")


def _lr_from_hr(path: Path, hr: np.ndarray, scale: int, kernel: int) -> tuple[np.ndarray, Image.Image]:
    """The LR input made from HR as LAM makes it, checked against the kernel, and its PIL image."""
    from ..lam_pictures import lr_from_hr

    try:
        lr, _ = lr_from_hr(_to_pil(hr), scale)
    except ImageTooSmall as exc:
        raise ImageTooSmall(f"{path}: {exc}") from None
    array = np.asarray(lr).reshape(lr.height, lr.width, -1)
    _check_image(path, array, kernel)
    return array, lr


def _check_image(path: Path, lr: np.ndarray, kernel: int) -> None:
    from ..lam import check_image

    try:
        check_image(lr.shape[0], lr.shape[1], kernel)
    except ImageTooSmall as exc:
        raise ImageTooSmall(f"{path}: {exc}") from None


def _to_pil(array: np.ndarray) -> Image.Image:
    """H x W x C uint8 (or uint16, reduced to 8 bits as LAM's PIL pipeline holds it) -> PIL image."""
    from PIL import Image

    array = to_8bit(array)
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _check_all(upscalers: list[tuple[str, Any]], lr: np.ndarray, region: Window) -> None:
    """Fail before any model runs: the window against each SR size, the channels against each network."""
    from ..lam import check_window

    height, width = lr.shape[:2]
    for name, upscaler in upscalers:
        check_window(region, height * upscaler.scale, width * upscaler.scale)
        _channels(lr, upscaler.model.in_channels, name)


def _channels(array: np.ndarray, wanted: int, path_name: str) -> np.ndarray:
    if array.shape[2] == wanted:
        return array
    if array.shape[2] == 1 and wanted == 3:
        return grey_to_rgb(array)
    raise InputImageError(f"{path_name}: {array.shape[2]}-channel image, the model takes {wanted} channels")


def _analyse(
    name: str,
    upscaler: Any,
    lr: np.ndarray,
    region: Window,
    sigma: float,
    steps: int,
    kernel: int,
    batch: int | None,
    show: bool,
) -> Analysed:
    from ..lam import attribute

    net = upscaler.model
    image = _channels(lr, net.in_channels, name)
    with counter_bar(eta=True, disable=not (show and err_console.is_terminal)) as bar:
        task = bar.add_task(f"LAM {name}", total=steps)
        result = attribute(
            net,
            image,
            region,
            sigma=sigma,
            steps=steps,
            kernel=kernel,
            batch=batch,
            device=upscaler.device,
            dtype=upscaler.dtype,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    return Analysed(name, upscaler.scale, str(upscaler.device), upscaler.precision, result)


def _write(output: Path, analysed: list[Analysed], lr: np.ndarray, lr_picture: Image.Image | None) -> None:
    """attribution.npy, the pictures and lam.json per model; comparison.png for several models."""
    from ..lam_pictures import comparison_strip, make_pictures, save_array, save_pictures, save_png

    several = len(analysed) > 1
    for item in analysed:
        folder = output / folder_name(item.name) if several else output
        item.pictures = make_pictures(lr, item.result, item.scale)
        save_array(item.result.attribution, folder / "attribution.npy")
        save_pictures(item.pictures, folder)
        if lr_picture is not None:
            save_png(lr_picture, folder / "lr.png")
        item.folder = folder
        text = json.dumps({"model": item.name, **item.result.to_json()}, indent=2) + "\n"
        write_bytes(folder / "lam.json", text.encode())
    if several:
        framed = analysed[0].pictures.framed  # type: ignore[union-attr]
        columns = [(item.name, item.pictures, item.result.diffusion_index) for item in analysed]
        save_png(comparison_strip(framed, columns), output / "comparison.png")  # type: ignore[arg-type]


def _report(item: Analysed) -> None:
    result = item.result
    print_line(
        f"{item.name}: DI {result.diffusion_index:.2f}  (window {result.window.size} px at "
        f"x={result.window.x}, y={result.window.y}; {result.steps} steps in {result.seconds:.1f} s, "
        f"{result.steps_per_second:.1f} steps/s, batch {result.batch}, {item.device} {item.precision})",
        err=False,
    )
