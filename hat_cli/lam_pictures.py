"""Pictures of a local attribution map, drawn as the official LAM code draws them
(chxy95/LAM_Demo ``vis_saliency``, ``vis_saliency_kde``, ``make_pil_grid``), and the LR-from-HR
preparation it uses.

* the input with the analysed window drawn on it;
* the attribution heat map: matplotlib's ``seismic`` colour map of ``0.5 + map / 2`` (white = no
  contribution, red = strong), enlarged ``scale`` times with nearest neighbours;
* the heat map blended 50/50 over the bicubic-upscaled input;
* a smoothed version: a weighted Gaussian kernel density estimate of the map (as
  ``scipy.stats.gaussian_kde`` with Scott's bandwidth), coloured the same way, bicubic-enlarged;
* the SR output; and one strip of [input + window, heat map, heat blend, KDE blend, SR] (the
  official figure). Several models give one comparison strip with each model's name and DI.

PIL and numpy only: the colour map is built from its definition and the KDE is an FFT convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

from . import imageio
from .atomic import atomic_write
from .errors import ImageTooSmall
from .lam import LamResult, Window
from .pixels import grey_to_rgb, quantize_array, to_8bit

# matplotlib's "seismic": dark blue, blue, white, red, dark red at 0, 1/4, 1/2, 3/4, 1
SEISMIC = ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0))
LUT_SIZE = 256  # matplotlib's rcParams["image.lut"]
BLEND_ALPHA = 0.5  # share of the input in the official blends
WINDOW_COLOUR = (255, 0, 0)


# --------------------------------------------------------------------------- colour map


def colormap_lut(colours: Sequence[tuple[float, float, float]] = SEISMIC, size: int = LUT_SIZE) -> np.ndarray:
    """(size, 3) float64: the table of ``LinearSegmentedColormap.from_list(colours, size)``.

    Colours are evenly spaced on 0..1; entry ``k`` interpolates linearly at ``k / (size - 1)``,
    computed in units of entries as matplotlib's ``_create_lookup_table`` does (same rounding).
    """
    last = size - 1
    anchors = np.linspace(0.0, 1.0, len(colours)) * last  # matplotlib works in units of table entries
    table = np.asarray(colours, dtype=np.float64)
    positions = (last * np.linspace(0.0, 1.0, size))[1:-1]
    index = np.searchsorted(anchors, positions)
    distance = (positions - anchors[index - 1]) / (anchors[index] - anchors[index - 1])
    middle = distance[:, None] * (table[index] - table[index - 1]) + table[index - 1]
    return np.clip(np.concatenate([table[:1], middle, table[-1:]]), 0.0, 1.0)


def colorize(values: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
    """(h, w) floats in 0..1 -> (h, w, 3) uint8: ``(255 * cmap(values)).astype(uint8)`` as matplotlib
    looks floats up (``int(values * N)``, 1.0 -> the last entry) and the official code truncates."""
    lut = colormap_lut() if lut is None else lut
    scaled = np.array(values, copy=True)
    scaled *= len(lut)
    scaled[scaled == len(lut)] = len(lut) - 1
    index = np.clip(np.nan_to_num(scaled, nan=0.0), -1, len(lut)).astype(int).clip(0, len(lut) - 1)
    return (255 * lut[index]).astype(np.uint8)


def saliency_picture(attribution_map: np.ndarray, zoom: int) -> Image.Image:
    """(h, w) map in 0..1 -> RGB (zoom*w, zoom*h): the official ``vis_saliency``."""
    picture = Image.fromarray(colorize(attribution_map * 0.5 + 0.5))
    return picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.NEAREST)


# --------------------------------------------------------------------------- kernel density


def kde_density(attribution_map: np.ndarray) -> np.ndarray:
    """(h, w) -> (h, w) float64 in 0..1: the map's weighted Gaussian KDE at every pixel, over its max.

    As ``scipy.stats.gaussian_kde(pixels, weights=map)`` on (x, y) pixel positions: covariance =
    the weighted data covariance (``np.cov(aweights=...)``, ddof 1) times Scott's factor squared,
    ``n_eff ** (-2 / (d + 4))`` with ``n_eff = 1 / sum(w^2)`` for normalised weights and d = 2.
    Evaluated on the pixel grid itself, the estimate is a convolution of the map with one sampled
    Gaussian: computed with an FFT. A map without spread (one pixel, or all zero) is returned as is.
    """
    weights = np.asarray(attribution_map, dtype=np.float64)
    total = weights.sum()
    if not total > 0:
        return np.zeros_like(weights)
    covariance = _kde_covariance(weights / total)
    if covariance is None:
        return weights / weights.max()
    density = _convolve(weights / total, _gaussian_offsets(weights.shape, np.linalg.inv(covariance)))
    density = np.maximum(density, 0.0)  # FFT round-off far from the mass
    return density / density.max()


def _kde_covariance(weights: np.ndarray) -> np.ndarray | None:
    """(h, w) weights summing to 1 -> (2, 2) kernel covariance in (x, y), or None if degenerate."""
    rows, cols = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]]
    points = np.stack([cols.ravel(), rows.ravel()]).astype(np.float64)  # (2, N): x first, as the official
    flat = weights.ravel()
    squares = np.sum(flat**2)
    if squares >= 1.0:  # one pixel holds everything
        return None
    centred = points - (points * flat).sum(axis=1, keepdims=True)
    data = (centred * flat) @ centred.T / (1.0 - squares)
    factor = (1.0 / squares) ** (-1.0 / 6.0)  # Scott: n_eff ** (-1 / (d + 4)), d = 2
    covariance = data * factor**2
    if not np.all(np.isfinite(covariance)) or np.linalg.det(covariance) <= 0:
        return None
    return covariance


def _gaussian_offsets(shape: tuple[int, ...], precision: np.ndarray) -> np.ndarray:
    """(2h-1, 2w-1): ``exp(-d^T P d / 2)`` for every offset d = (dx, dy) between two pixels."""
    height, width = shape
    dy, dx = np.mgrid[-(height - 1) : height, -(width - 1) : width].astype(np.float64)
    quadratic = precision[0, 0] * dx**2 + 2 * precision[0, 1] * dx * dy + precision[1, 1] * dy**2
    return np.exp(-0.5 * quadratic)


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(h, w) * (2h-1, 2w-1) centred kernel -> (h, w): linear (not circular) convolution by FFT."""
    height, width = image.shape
    shape = (height + kernel.shape[0] - 1, width + kernel.shape[1] - 1)
    spectrum = np.fft.rfft2(image, shape) * np.fft.rfft2(kernel, shape)
    full = np.fft.irfft2(spectrum, shape)
    return full[height - 1 : 2 * height - 1, width - 1 : 2 * width - 1]


def kde_picture(attribution_map: np.ndarray, zoom: int) -> Image.Image:
    """(h, w) map -> RGB (zoom*w, zoom*h): the official ``vis_saliency_kde`` (bicubic enlargement)."""
    picture = Image.fromarray(colorize(kde_density(attribution_map) * 0.5 + 0.5))
    return picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- composition


def to_picture(image: np.ndarray) -> Image.Image:
    """(C, h, w) float in 0..1 (clipped, rounded) or H x W x C uint8/uint16 -> RGB PIL image."""
    array = np.asarray(image)
    array = rearrange(quantize_array(array), "c h w -> h w c") if array.dtype.kind == "f" else to_8bit(array)
    return Image.fromarray(np.ascontiguousarray(grey_to_rgb(array)[:, :, :3]))


def blend(picture: Image.Image, background: Image.Image, alpha: float = BLEND_ALPHA) -> Image.Image:
    """``picture * (1 - alpha) + background * alpha``, truncated to uint8 (the official blends)."""
    mixed = np.asarray(picture, dtype=np.float64) * (1.0 - alpha) + np.asarray(background, dtype=np.float64) * alpha
    return Image.fromarray(mixed.astype(np.uint8))


def draw_window(picture: Image.Image, x: int, y: int, size: int, width: int) -> Image.Image:
    """A copy of ``picture`` with a red ``size``-pixel square outlined at column ``x``, row ``y``."""
    framed = picture.copy()
    ImageDraw.Draw(framed).rectangle((x, y, x + size - 1, y + size - 1), outline=WINDOW_COLOUR, width=width)
    return framed


def input_with_window(lr: Image.Image, window: Window, scale: int) -> Image.Image:
    """The LR input with the window outlined in LR coordinates (SR window / scale, at least 1 px)."""
    size = max(1, math.ceil(window.size / scale))
    return draw_window(lr, window.x // scale, window.y // scale, size, 1)


def make_strip(pictures: Sequence[Image.Image]) -> Image.Image:
    """Equal-size pictures side by side (the official ``make_pil_grid``)."""
    width, height = pictures[0].size
    if any(picture.size != (width, height) for picture in pictures):
        raise ValueError("strip pictures must all have the same size")
    strip = Image.new("RGB", (width * len(pictures), height))
    for index, picture in enumerate(pictures):
        strip.paste(picture, (index * width, 0))
    return strip


@dataclass
class LamPictures:
    """The pictures of one model's LAM (file name = field name + .png)."""

    input: Image.Image  # LR input, window outlined in LR pixels
    saliency: Image.Image  # heat map, SR size
    blend: Image.Image  # heat map over the upscaled input
    kde: Image.Image  # smoothed heat map
    kde_blend: Image.Image  # smoothed heat map over the upscaled input
    sr: Image.Image  # SR output
    strip: Image.Image  # [input + window, heat map, heat blend, KDE blend, SR]
    framed: Image.Image  # the upscaled input with the window in SR pixels (first strip picture)

    def named(self) -> dict[str, Image.Image]:
        """File stem -> picture, without ``framed`` (it is in the strip)."""
        return {field.name: getattr(self, field.name) for field in fields(self) if field.name != "framed"}


def make_pictures(lr: np.ndarray | Image.Image, result: LamResult, scale: int) -> LamPictures:
    """Every picture of ``result`` for the LR input ``lr`` ((C, h, w) float, H x W x C int, or PIL)."""
    source = lr.convert("RGB") if isinstance(lr, Image.Image) else to_picture(lr)
    upscaled = source.resize((source.width * scale, source.height * scale), Image.Resampling.BICUBIC)
    window = result.window
    framed = draw_window(upscaled, window.x, window.y, window.size, 2)
    saliency = saliency_picture(result.map, scale)
    kde = kde_picture(result.map, scale)
    heat_blend, kde_blend = blend(saliency, upscaled), blend(kde, upscaled)
    sr = to_picture(result.sr)
    return LamPictures(
        input=input_with_window(source, window, scale),
        saliency=saliency,
        blend=heat_blend,
        kde=kde,
        kde_blend=kde_blend,
        sr=sr,
        strip=make_strip([framed, saliency, heat_blend, kde_blend, sr]),
        framed=framed,
    )


def comparison_strip(framed: Image.Image, columns: Sequence[tuple[str, LamPictures, float]]) -> Image.Image:
    """One figure for several models (the paper's Fig. 1): the input with its window, then per model
    a column of [heat map, KDE blend] captioned with its name and DI. ``columns``: (name, pictures, DI)."""
    width, height = framed.size
    font = _font(max(10, min(18, width // 10)))
    caption = 2 * _line_height(font) + 8
    figure = Image.new("RGB", (width * (1 + len(columns)), 2 * height + caption), "white")
    figure.paste(framed, (0, 0))
    draw = ImageDraw.Draw(figure)
    _caption(draw, font, 0, 2 * height, width, ["input"])
    for index, (name, pictures, di) in enumerate(columns, start=1):
        figure.paste(pictures.saliency, (index * width, 0))
        figure.paste(pictures.kde_blend, (index * width, height))
        _caption(draw, font, index * width, 2 * height, width, [name, f"DI {di:.2f}"])
    return figure


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom - top) + 2


def _caption(draw: ImageDraw.ImageDraw, font, left: int, top: int, width: int, lines: Sequence[str]) -> None:
    """Centred lines under a column, shortened with an ellipsis to fit its width."""
    for row, text in enumerate(lines):
        while len(text) > 1 and draw.textlength(text, font=font) > width - 4:
            text = text[:-2] + "…"
        offset = (width - draw.textlength(text, font=font)) / 2
        draw.text((left + offset, top + 4 + row * _line_height(font)), text, fill="black", font=font)


# --------------------------------------------------------------------------- files


def save_png(picture: Image.Image, path: Path) -> None:
    """Write ``picture`` as an optimised PNG, atomically."""
    imageio.save_png(picture, path, optimize=True)


def save_pictures(pictures: LamPictures, folder: Path) -> list[Path]:
    """Write every picture as ``folder/<name>.png``; returns the paths."""
    paths = []
    for name, picture in pictures.named().items():
        path = folder / f"{name}.png"
        save_png(picture, path)
        paths.append(path)
    return paths


def save_array(array: np.ndarray, path: Path) -> None:
    """Write a ``.npy`` file atomically."""
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


# --------------------------------------------------------------------------- LR from HR


def lr_from_hr(hr: Image.Image, scale: int) -> tuple[Image.Image, Image.Image]:
    """The official ``prepare_images``: crop the HR image bottom/right to a multiple of ``scale``,
    then PIL's bicubic downscale. -> (LR, cropped HR)."""
    width, height = hr.size
    if width < scale or height < scale:
        raise ImageTooSmall(f"HR image {width}x{height} is smaller than the x{scale} scale factor")
    hr = hr.crop((0, 0, width - width % scale, height - height % scale))
    return hr.resize((hr.width // scale, hr.height // scale), Image.Resampling.BICUBIC), hr


__all__ = [
    "SEISMIC",
    "LamPictures",
    "blend",
    "colorize",
    "colormap_lut",
    "comparison_strip",
    "draw_window",
    "input_with_window",
    "kde_density",
    "kde_picture",
    "lr_from_hr",
    "make_pictures",
    "make_strip",
    "saliency_picture",
    "save_array",
    "save_pictures",
    "save_png",
    "to_picture",
]
