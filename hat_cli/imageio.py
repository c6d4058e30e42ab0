"""Reading and writing images for upscaling: every common format and mode, metadata kept, atomic writes.

A file becomes a :class:`Picture`: its frames as HxWxC ``uint8``/``uint16`` arrays (C = 1 grey,
2 grey+alpha, 3 RGB, 4 RGBA) plus what must survive the round trip (ICC profile, EXIF, DPI,
animation timing). EXIF orientation is applied on reading, so pixels are always upright.

Pillow decodes and encodes everything except 16-bit colour, which it cannot hold: 16-bit PNGs are
decoded by pypng and encoded here (numpy + zlib), 16-bit TIFFs go through tifffile.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageSequence, UnidentifiedImageError

from .atomic import TempFiles, atomic_write
from .errors import HatError, InputImageError, OutputError, first_line
from .pixels import grey_to_rgb, peak, to_8bit, to_levels, to_unit

DEFAULT_MAX_PIXELS = 100_000_000  # refuse decompression bombs beyond this many input pixels (all frames)
# Each frame of an animation counts as at least this many pixels: a frame is one more forward pass
# however small it is, so 20,000 frames of 8x8 are not 1.3 M pixels of work.
MIN_FRAME_PIXELS = 128 * 128

_ORIENTATION = 0x0112
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003
# IFD0 tags worth carrying over; the rest (strip offsets, sizes, orientation, resolution) describe
# the old pixels, which matters for TIFF sources whose IFD0 is the image's own directory.
_EXIF_IFD0_KEEP = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298, 0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F)
_ANIMATED_FORMATS = {"GIF", "PNG", "WEBP", "AVIF"}  # multi-frame TIFF/MPO hold pages/previews, not animation
_ICC_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF", "AVIF"}
_EXIF_FORMATS = {"PNG", "JPEG", "WEBP", "AVIF"}
_DPI_FORMATS = {"PNG", "JPEG", "TIFF", "BMP"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "GIF", "AVIF"}
_RGB_ONLY_FORMATS = {"WEBP", "AVIF"}  # no grey modes: grey is written as equal R, G, B
DEFAULT_QUALITY = 95
# The largest side each format holds: beyond it Pillow fails after the work, or (ICO) silently
# stores a smaller copy.
_MAX_SIDE = {"ICO": 256, "WEBP": 16383, "JPEG": 65535, "GIF": 65535}
# Writers that store fixed sizes, not the image's own (ICNS: icon sizes 16..1024): never written,
# so an .icns input is written as PNG and -o x.icns is refused.
_NOT_WRITTEN = {"ICNS"}


@dataclass
class Picture:
    """Decoded image: upright frames plus the metadata that is written back out."""

    frames: list[np.ndarray]
    format: str = "PNG"  # Pillow's name for the format it was read from
    icc_profile: bytes | None = None
    exif: Image.Exif | None = None  # orientation already applied and removed
    dpi: tuple[float, float] | None = None
    durations: list[int] | None = None  # milliseconds per frame, animations only
    loop: int | None = None

    @property
    def height(self) -> int:
        return self.frames[0].shape[0]

    @property
    def width(self) -> int:
        return self.frames[0].shape[1]

    @property
    def channels(self) -> int:
        return self.frames[0].shape[2]

    @property
    def bits(self) -> int:
        return 16 if self.frames[0].dtype == np.uint16 else 8

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def is_grey(self) -> bool:
        return self.channels in (1, 2)

    @property
    def mode(self) -> str:
        """Pillow-style mode name, ``;16`` appended for 16-bit pictures (for messages and JSON)."""
        name = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.channels]
        return f"{name};16" if self.bits == 16 else name

    def scaled(self, frames: list[np.ndarray], scale: float | None = None) -> Picture:
        """The same picture with new (resized) frames: DPI multiplied so the print size is unchanged
        (by ``scale``, or by each axis's ratio of new to old size when it is None)."""
        if scale is not None:
            factors = (scale, scale)
        else:
            factors = (frames[0].shape[1] / self.width, frames[0].shape[0] / self.height)
        dpi = (self.dpi[0] * factors[0], self.dpi[1] * factors[1]) if self.dpi else None
        return replace(self, frames=frames, dpi=dpi)


# ---------------------------------------------------------------------------------------- formats
def suffix_for_bytes(data: bytes) -> str | None:
    """The usual suffix (``.png``) of an encoded image held in memory (stdin), or None if unknown."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except Exception:  # not an image Pillow knows: the reader reports it, naming the input
        return None
    preferred = {"JPEG": ".jpg", "TIFF": ".tiff", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
    if fmt in preferred:
        return preferred[fmt]
    return next((ext for ext, name in Image.registered_extensions().items() if name == fmt), None)


def kept_suffix(suffix: str) -> str:
    """The suffix an output of ``--format keep`` takes: the input's (lower case) where hat writes that
    format, else ``.png`` (an ``.icns`` or ``.psd`` input, a file without a suffix)."""
    suffix = suffix.lower()
    return suffix if suffix and format_for_suffix(suffix) is not None else ".png"


def format_for_suffix(suffix: str) -> str | None:
    """Pillow's writer name for a suffix (``.jpg`` -> ``JPEG``), or ``None`` if it cannot be written."""
    Image.init()
    fmt = Image.registered_extensions().get(suffix.lower())
    return fmt if fmt in Image.SAVE and fmt not in _NOT_WRITTEN else None


# ---------------------------------------------------------------------------------------- reading
def counted_pixels(width: int, height: int, frames: int = 1) -> int:
    """What an image counts against ``--max-pixels``: its pixels, every frame of an animation
    counted, each frame as at least :data:`MIN_FRAME_PIXELS`."""
    return width * height if frames <= 1 else frames * max(width * height, MIN_FRAME_PIXELS)


def too_large(path: Path, width: int, height: int, max_pixels: int, frames: int = 1) -> InputImageError | None:
    """The one message for an image over the pixel limit (every command), or None when it fits."""
    if counted_pixels(width, height, frames) <= max_pixels:
        return None
    return over_limit(path, f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else ""), max_pixels)


def over_limit(path: Path, what: str, max_pixels: int) -> InputImageError:
    """``{path}: {what} exceeds the N-pixel limit``: the message of :func:`too_large`."""
    return InputImageError(f"{path}: {what} exceeds the {max_pixels:,}-pixel limit (raise --max-pixels)")


def _frame_count(image: Image.Image) -> int:
    return getattr(image, "n_frames", 1) if image.format in _ANIMATED_FORMATS else 1


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` from the file's header, without decoding the pixels; the pixel limit is
    checked as :func:`read_picture` checks it (same rule, same message)."""
    _allow_pillow_pixels(max_pixels)
    try:
        with Image.open(path) as image:
            width, height, frames = image.width, image.height, _frame_count(image)
    except Image.DecompressionBombError as exc:
        raise _pillow_refused(path, exc, max_pixels) from None
    except UnidentifiedImageError:
        if not _is_tiff(path):
            raise InputImageError(f"{path}: not a recognised image (unknown format or corrupt header)") from None
        width, height, frames = _tiff_size(path)  # a TIFF only tifffile reads (as read_picture does)
    except Exception as exc:  # OSError, SyntaxError, struct.error... on a damaged header
        reason = first_line(exc)
        raise InputImageError(f"{path}: cannot read image ({reason})") from exc
    if (error := too_large(path, width, height, max_pixels, frames)) is not None:
        raise error
    return height, width


def read_picture(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode ``path`` with orientation applied; every failure is an :class:`InputImageError` naming the file."""
    try:
        if path.is_dir():
            raise InputImageError(f"{path}: is a folder, not an image")
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise InputImageError(f"{path}: empty file (0 bytes)")
    _allow_pillow_pixels(max_pixels)
    try:
        with Image.open(path) as image:
            return _decode(image, path, max_pixels)
    except HatError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard (twice our limit) fired while opening
        raise _pillow_refused(path, exc, max_pixels) from None
    except UnidentifiedImageError:
        if _is_tiff(path):  # Pillow has no mode for some 16-bit TIFFs (grey + alpha): tifffile does
            return _read_tiff_fallback(path, max_pixels)
        raise InputImageError(f"{path}: not a recognised image (unknown format or corrupt header)") from None
    except PermissionError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror})") from exc
    except MemoryError:
        raise InputImageError(f"{path}: not enough memory to decode it") from None
    except Exception as exc:  # decoders raise anything on bad data (OSError, SyntaxError, zlib.error, struct.error...)
        reason = first_line(exc)
        raise InputImageError(f"{path}: corrupt or truncated image ({reason})") from exc


def _pillow_refused(path: Path, exc: Exception, max_pixels: int) -> InputImageError:
    """Our limit's message for an image Pillow refused to open (it says only the pixel count)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return over_limit(path, f"{int(found[1]):,}-pixel image" if found else "image", max_pixels)


def _allow_pillow_pixels(max_pixels: int) -> None:
    # Pillow refuses images over 2 * MAX_IMAGE_PIXELS before we can check; our own limit replaces
    # it, so only ever raise Pillow's when a caller asked for more (it is never lowered).
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(image: Image.Image, path: Path, max_pixels: int) -> Picture:
    n_frames = _frame_count(image)
    if (error := too_large(path, image.width, image.height, max_pixels, n_frames)) is not None:
        raise error
    source_exif = image.getexif()
    orientation = source_exif.get(_ORIENTATION, 1)
    picture = Picture(
        frames=[],
        format=image.format or "PNG",
        icc_profile=image.info.get("icc_profile") or None,
        exif=_portable_exif(source_exif),
        dpi=_dpi(image.info.get("dpi")),
    )
    if n_frames == 1 and image.format == "PNG" and _png_bit_depth(path) == 16:
        picture.frames = [_read_png16(path)]
    elif image.format == "TIFF" and 16 in _tiff_bits(image):
        picture.frames = [_read_tiff16(path)]
    elif image.mode == "CMYK":
        image.load()
        picture.frames = [_cmyk_to_rgb(image, picture)]
    else:
        durations = []
        for frame in ImageSequence.Iterator(image):
            picture.frames.append(_frame_array(frame, path))
            durations.append(int(frame.info.get("duration") or 0))
            if len(picture.frames) == n_frames:
                break
        if n_frames > 1:
            picture.durations = durations
            picture.loop = image.info.get("loop", 0)
            picture.frames = _same_channels(picture.frames)
    picture.frames = [_orient(frame, orientation) for frame in picture.frames]
    return picture


def _frame_array(frame: Image.Image, path: Path) -> np.ndarray:
    """One Pillow frame as HxWxC uint8/uint16 in L, LA, RGB or RGBA layout."""
    mode = frame.mode
    if mode == "P":
        frame = frame.convert("RGBA" if "transparency" in frame.info else "RGB")
    elif mode == "1":
        frame = frame.convert("L")
    elif mode in ("PA", "RGBa", "La"):
        frame = frame.convert("RGBA" if mode != "La" else "LA")
    elif mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        frame = frame.convert("RGB")
    elif mode == "F":
        raise InputImageError(f"{path}: 32-bit floating-point images are not supported (8/16-bit integer only)")
    array = np.asarray(frame)
    if mode.startswith("I"):  # I;16, I;16B, I;16L, or I holding 16-bit values
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise InputImageError(f"{path}: 32-bit integer images are not supported")
        array = array.astype(np.uint16)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def _same_channels(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Animations may mix palette, RGB and RGBA frames: lift all to the richest layout."""
    channels = max(frame.shape[2] for frame in frames)
    return [_with_channels(frame, channels) for frame in frames]


def _with_channels(array: np.ndarray, channels: int) -> np.ndarray:
    have = array.shape[2]
    if have == channels:
        return array
    colour, alpha = (array[..., :-1], array[..., -1:]) if have in (2, 4) else (array, None)
    if channels >= 3:
        colour = grey_to_rgb(colour)
    if channels in (2, 4) and alpha is None:
        alpha = np.full((*array.shape[:2], 1), np.iinfo(array.dtype).max, array.dtype)
    return np.concatenate([colour, alpha], axis=2) if channels in (2, 4) else colour


def _cmyk_to_rgb(image: Image.Image, picture: Picture) -> np.ndarray:
    """CMYK through its own ICC profile to sRGB when it has one (the output is tagged sRGB)."""
    icc = picture.icc_profile
    if icc and icc[16:20] == b"CMYK":
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        rgb = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
        picture.icc_profile = _undated(srgb.tobytes())
    else:  # no usable profile: Pillow's naive conversion, and no profile claiming otherwise
        rgb = image.convert("RGB")
        picture.icc_profile = None
    return np.asarray(rgb).copy()


def _undated(icc: bytes) -> bytes:
    """An ICC profile with its creation date/time (header bytes 24-35) zeroed: lcms stamps the
    current time there, which would make the same input give different output bytes each run."""
    return icc[:24] + bytes(12) + icc[36:]


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) like ``ImageOps.exif_transpose``, for any dtype and channel count."""
    transforms: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(array)) if transform else array


def _portable_exif(exif: Image.Exif) -> Image.Exif | None:
    """The EXIF worth copying: descriptive IFD0 tags plus the Exif and GPS sub-IFDs, no orientation."""
    out = Image.Exif()
    for tag in _EXIF_IFD0_KEEP:
        if tag in exif:
            out[tag] = exif[tag]
    for ifd_tag in (_EXIF_IFD, _GPS_IFD):
        try:
            ifd = dict(exif.get_ifd(ifd_tag))
        except Exception:  # a broken sub-IFD loses only itself
            continue
        ifd.pop(_INTEROP_IFD, None)  # an offset into the old file: meaningless once rewritten
        if ifd:
            out[ifd_tag] = ifd
    return out if len(out) else None


def _dpi(value: object) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as handle:
        header = handle.read(26)
    return header[24] if len(header) == 26 and header[12:16] == b"IHDR" else 8


def _tiff_bits(image: Image.Image) -> tuple[int, ...]:
    bits = image.tag_v2.get(258, (8,))  # type: ignore[attr-defined]
    return tuple(bits) if isinstance(bits, tuple) else (int(bits),)


def _read_png16(path: Path) -> np.ndarray:
    import png  # pypng: the decoder for 16-bit colour that Pillow truncates to 8 bits

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return array.reshape(height, width, info["planes"])


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_size(path: Path) -> tuple[int, int, int]:
    """``(width, height, 1)`` of a TIFF's first page, from tifffile's tags."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength), 1
    except Exception as exc:  # tifffile's errors on a damaged file
        reason = first_line(exc)
        raise InputImageError(f"{path}: corrupt or truncated image ({reason})") from exc


def _read_tiff_fallback(path: Path, max_pixels: int) -> Picture:
    try:
        return _read_tiff_only(path, max_pixels)
    except HatError:
        raise
    except Exception as exc:  # tifffile's errors on a damaged file
        reason = first_line(exc)
        raise InputImageError(f"{path}: corrupt or truncated image ({reason})") from exc


def _read_tiff_only(path: Path, max_pixels: int) -> Picture:
    """A TIFF that Pillow cannot open, metadata from tifffile's tags (no EXIF beyond orientation)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tags = {tag.code: tag.value for tag in page.tags}
        height, width = page.imagelength, page.imagewidth
    if (error := too_large(path, width, height, max_pixels)) is not None:
        raise error
    dpi = None
    if 282 in tags and 283 in tags and tags.get(296, 2) in (2, 3):
        per_inch = 2.54 if tags.get(296, 2) == 3 else 1.0
        dpi = _dpi([per_inch * n / d for n, d in (tags[282], tags[283])])
    icc = tags.get(34675)
    return Picture(
        frames=[_orient(_read_tiff16(path), int(tags.get(_ORIENTATION, 1)))],
        format="TIFF",
        icc_profile=bytes(icc) if icc else None,
        dpi=dpi,
    )


def _read_tiff16(path: Path) -> np.ndarray:
    import tifffile  # 16-bit colour TIFF, which Pillow truncates to 8 bits

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        try:
            array = page.asarray()
        except ValueError as exc:  # e.g. LZW without the optional imagecodecs package
            raise InputImageError(f"{path}: cannot decode this TIFF ({exc})") from exc
        photometric = tifffile.PHOTOMETRIC(page.photometric).name  # an int for some pages, an enum for others
        if tifffile.PLANARCONFIG(page.planarconfig).name == "SEPARATE" and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
    if array.dtype.kind == "f":
        bits = array.dtype.itemsize * 8
        raise InputImageError(f"{path}: {bits}-bit floating-point images are not supported (8/16-bit integer only)")
    if array.dtype != np.uint16 or photometric not in ("RGB", "MINISBLACK", "MINISWHITE"):
        raise InputImageError(
            f"{path}: unsupported TIFF ({photometric}, {array.dtype}): 8/16-bit integer RGB or grey only"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if photometric == "MINISWHITE":
        array[..., 0] = 65535 - array[..., 0]
    if array.shape[2] > 4:  # extra samples beyond alpha carry nothing we can upscale meaningfully
        array = array[..., :4]
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------- writing
def check_writable(picture: Picture, path: Path, size: tuple[int, int] | None = None) -> str:
    """The Pillow format for ``path``, or an :class:`OutputError` if it cannot hold ``picture`` at
    ``size`` (height, width; default its own: checked before upscaling too, with the final size, so no
    work is wasted on an output that cannot be written)."""
    fmt = format_for_suffix(path.suffix)
    if fmt is None:
        raise OutputError(f"{path}: cannot write {path.suffix or 'files without an extension'} images")
    if len(picture.frames) > 1 and fmt not in Image.SAVE_ALL:
        raise OutputError(
            f"{path}: {fmt} cannot hold the {len(picture.frames)} frames of an animation (use png or webp)"
        )
    height, width = size or (picture.height, picture.width)
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(width, height) > side:
        raise OutputError(
            f"{path}: {fmt} holds at most {side}x{side} pixels, the output is {width}x{height} "
            "(use --format png or tiff)"
        )
    return fmt


def save_png(image: Image.Image | np.ndarray, path: Path, optimize: bool = False) -> Path:
    """A PIL image or an H x W [x C] uint8 array as a PNG, atomically (an interrupted run leaves no
    truncated file under the final name)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return atomic_write(path, lambda handle: picture.save(handle, format="PNG", optimize=optimize))


def write_picture(
    picture: Picture,
    path: Path,
    quality: int | None = None,
    overwrite: bool = True,
    temps: TempFiles | None = None,
) -> None:
    """Encode ``picture`` in the format named by ``path``'s suffix, atomically."""
    fmt = check_writable(picture, path)

    def encode(handle: BinaryIO) -> None:
        try:
            _encode(picture, handle, fmt, quality)
        except (HatError, OSError):
            raise
        except Exception as exc:  # encoders reject modes/sizes with ValueError, KeyError...
            raise OutputError(f"{path}: cannot encode as {fmt} ({exc})") from exc

    atomic_write(path, encode, overwrite=overwrite, temps=temps)


def holds_picture(path: Path, picture: Picture, quality: int | None = None) -> bool:
    """``path`` is a regular file holding exactly the bytes :func:`write_picture` would write for
    ``picture`` (encoding is deterministic): it is that output, whoever wrote it."""
    fmt = check_writable(picture, path)
    buffer = io.BytesIO()
    _encode(picture, buffer, fmt, quality)
    try:
        if not path.is_file() or path.stat().st_size != buffer.tell():
            return False
        return path.read_bytes() == buffer.getvalue()
    except OSError:
        return False


def _encode(picture: Picture, handle: BinaryIO, fmt: str, quality: int | None) -> None:
    animated = len(picture.frames) > 1
    if picture.bits == 16 and not animated and fmt == "PNG":
        _write_png16(picture, handle)
    elif picture.bits == 16 and not animated and fmt == "TIFF":
        _write_tiff16(picture, handle)
    else:
        _write_pillow(picture, handle, fmt, quality)


def _exif_bytes(picture: Picture) -> bytes | None:
    if picture.exif is None:
        return None
    exif = Image.Exif()
    for tag, value in picture.exif.items():
        exif[tag] = value
    if _EXIF_IFD in exif and isinstance(exif[_EXIF_IFD], dict):
        ifd = dict(exif[_EXIF_IFD])
        for tag, size in ((_PIXEL_X, picture.width), (_PIXEL_Y, picture.height)):
            if tag in ifd:  # the Exif copy of the size must match the new pixels
                ifd[tag] = size
        exif[_EXIF_IFD] = ifd
    return exif.tobytes()


def _icc_for(picture: Picture, mode: str) -> bytes | None:
    """The ICC profile, unless its colour space cannot describe the written pixels (grey vs RGB)."""
    icc = picture.icc_profile
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if mode in ("L", "LA") else b"RGB ") else None


def _pillow_frame(array: np.ndarray, fmt: str) -> Image.Image:
    """An 8-bit Pillow image of ``array`` in a mode ``fmt`` can hold."""
    array = to_8bit(array)
    channels = array.shape[2]
    if channels in (2, 4) and fmt not in _ALPHA_FORMATS:
        # No alpha in this format (JPEG): composite over white, as viewers show transparency.
        alpha = to_unit(array[..., -1:])
        colour = array[..., :-1].astype(np.float32) * alpha + peak(np.uint8) * (1.0 - alpha)
        array = to_levels(colour, np.uint8)
        channels -= 1
    if fmt in _RGB_ONLY_FORMATS:
        array = _with_channels(array, 4 if channels in (2, 4) else 3)
    if fmt == "GIF" and array.shape[2] in (2, 4):
        array = array.copy()  # GIF transparency is one bit: decide at half opacity
        array[..., -1] = np.where(array[..., -1] >= 128, 255, 0)
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)  # mode from shape: L, LA, RGB, RGBA


def _write_pillow(picture: Picture, handle: BinaryIO, fmt: str, quality: int | None) -> None:
    frames = [_pillow_frame(frame, fmt) for frame in picture.frames]
    first = frames[0]
    options: dict = {}
    if fmt in _ICC_FORMATS and (icc := _icc_for(picture, first.mode)):
        options["icc_profile"] = icc
    if fmt in _EXIF_FORMATS and (exif := _exif_bytes(picture)):
        options["exif"] = exif
    if fmt in _DPI_FORMATS and picture.dpi:
        options["dpi"] = picture.dpi
    if fmt in ("JPEG", "WEBP", "AVIF"):
        options["quality"] = quality if quality is not None else DEFAULT_QUALITY
    if fmt == "JPEG" and options["quality"] >= 90:
        options["subsampling"] = 0  # 4:4:4: halving chroma would undo part of the upscaling
    if fmt == "WEBP" and options["quality"] == 100:
        options["lossless"] = True
    if fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    if fmt == "ICO":  # one entry of the image's own size (the default list would shrink it)
        options["sizes"] = [(first.width, first.height)]
    if len(frames) > 1:
        options.update(save_all=True, append_images=frames[1:], loop=picture.loop or 0)
        if picture.durations:
            options["duration"] = picture.durations
        if fmt == "GIF" and first.mode in ("RGBA", "LA"):
            options["disposal"] = 2  # each frame is complete: clear before drawing the next
    first.save(handle, format=fmt, **options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_png16(picture: Picture, handle: BinaryIO) -> None:
    """16-bit PNG (any of grey, grey+alpha, RGB, RGBA) with iCCP, pHYs and eXIf chunks."""
    array = picture.frames[0]
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if icc := _icc_for(picture, mode):
        out.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if picture.dpi:
        ppm = [max(1, round(d / 0.0254)) for d in picture.dpi]
        out.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if exif := _exif_bytes(picture):
        out.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    rows = array.astype(">u2").reshape(height, width * channels).view(np.uint8)
    out.append(_png_chunk(b"IDAT", zlib.compress(_paeth_filter(rows, 2 * channels), 6)))
    out.append(_png_chunk(b"IEND", b""))
    handle.write(b"".join(out))


def _paeth_filter(rows: np.ndarray, bpp: int) -> bytes:
    """PNG filter type 4 on every row (vectorised: the predictors come from unfiltered bytes)."""
    x = rows.astype(np.int16)
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    c = np.zeros_like(x)
    c[1:, bpp:] = x[:-1, :-bpp]
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    filtered = ((x - predictor) & 0xFF).astype(np.uint8)
    return np.hstack([np.full((rows.shape[0], 1), 4, np.uint8), filtered]).tobytes()


def _write_tiff16(picture: Picture, handle: BinaryIO) -> None:
    import tifffile

    array = picture.frames[0]
    channels = array.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    options: dict = {}
    if icc := _icc_for(picture, mode):
        options["iccprofile"] = icc
    if picture.dpi:
        options.update(resolution=picture.dpi, resolutionunit="INCH")
    buffer = io.BytesIO()  # tifffile takes an os.fdopen handle's int ``name`` for a path
    tifffile.imwrite(
        buffer,
        array[..., 0] if channels == 1 else array,
        photometric="rgb" if channels >= 3 else "minisblack",
        extrasamples=["unassalpha"] if channels in (2, 4) else None,
        compression="zlib",
        predictor=True,
        metadata=None,  # no tifffile JSON in ImageDescription
        software="hat-cli",
        **options,
    )
    handle.write(buffer.getbuffer())
