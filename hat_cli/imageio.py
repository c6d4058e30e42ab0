"""Reading and writing images safely (size-bounded, atomic writes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputImageError, OutputError

DEFAULT_MAX_PIXELS = 100_000_000  # refuse decompression bombs beyond this many input pixels


def default_output_path(path: Path, scale: int) -> Path:
    """``<stem>_x<scale>.png`` beside the input."""
    return path.with_name(f"{path.stem}_x{scale}.png")


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB with EXIF orientation applied; typed errors for every failure."""
    if not path.exists():
        raise InputImageError(f"{path}: no such file")
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise InputImageError(
                    f"{path}: {image.width}x{image.height} exceeds the {max_pixels:,}-pixel limit (raise --max-pixels)"
                )
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputImageError(f"{path}: not a readable image ({exc.__class__.__name__})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{path}: corrupt or truncated image ({exc})") from exc


def write_image(image: Image.Image, path: Path, **save_kwargs) -> None:
    """Write to a temporary file in the target folder, then rename: never a partial image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp_name, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), **save_kwargs)
        os.replace(tmp_name, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        Path(tmp_name).unlink(missing_ok=True)
