"""Test inputs for the batch/imageio tests: a tiny HAT checkpoint and images in every mode.

Inputs are made with independent writers (Pillow, pypng, tifffile), never with the code under test.
"""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

import numpy as np
import png
import tifffile
import torch
from PIL import Image, ImageCms

from hat_cli.checkpoint import save_checkpoint
from hat_cli.model import HAT
from hat_cli.upscaling import UpscalerBase
from tests.conftest import TINY_CONFIG

TINY = TINY_CONFIG
MAKE = "HatTestCam"


class Bilinear(UpscalerBase):
    """A stand-in upscaler with predictable colours (bilinear blends neighbours, so it would bleed)."""

    scale = 2  # type: ignore[assignment]
    name = "bilinear"

    def __init__(self) -> None:
        self.calls = 0

    def upscale_tensor(self, x: torch.Tensor, progress=None) -> torch.Tensor:
        self.calls += 1
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def save_tiny_weights(path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(path, HAT(TINY).state_dict(), TINY)


@functools.cache
def srgb_icc() -> bytes:
    """One sRGB profile per run: lcms stamps the creation time into the header, so two calls
    a second apart would differ and make byte comparisons flaky."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _lab(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """sRGB (0-1) -> CIE Lab under D50, the ICC connection space."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    matrix = ((0.4360747, 0.3850649, 0.1430804), (0.2225045, 0.7168786, 0.0606169), (0.0139322, 0.0971045, 0.7141733))
    xyz = [sum(m * c for m, c in zip(row, linear, strict=True)) for row in matrix]
    f = [
        (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116)
        for t in (xyz[0] / 0.9642, xyz[1] / 1.0, xyz[2] / 0.8249)
    ]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def cmyk_icc() -> bytes:
    """A minimal but valid ICC v2 CMYK output profile (naive CMYK -> sRGB through a 2-point lut16)."""
    clut = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    lab = _lab(((1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)))
                    encoded = (lab[0] / 100 * 0xFF00, (lab[1] + 128) * 256, (lab[2] + 128) * 256)
                    clut += [min(65535, max(0, round(v))) for v in encoded]
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = struct.pack(">HH", 0, 65535)
    a2b0 = (
        b"mft2"
        + bytes(4)
        + bytes([4, 3, 2, 0])
        + identity
        + struct.pack(">HH", 2, 2)
        + ramp * 4
        + struct.pack(f">{len(clut)}H", *clut)
        + ramp * 3
    )
    text = b"hat test CMYK"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text) + 1) + text + b"\0" + bytes(8) + bytes(3) + bytes(67)
    wtpt = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + bytes(4)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + bytes(4)
        + bytes(44)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def gradient(height: int, width: int, channels: int = 3, peak: int = 255) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    planes = [x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)]
    array = np.stack(planes[:channels], axis=-1) * peak
    return np.rint(array).astype(np.uint16 if peak > 255 else np.uint8)


def write_png16(path: Path, array: np.ndarray) -> None:
    height, width, channels = array.shape
    writer = png.Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=16)
    with path.open("wb") as handle:
        writer.write(handle, array.reshape(height, width * channels).tolist())


def rgba_with_hidden_green(height: int = 16, width: int = 16) -> np.ndarray:
    """Left half opaque red, right half fully transparent but with bright green hidden under it."""
    array = np.zeros((height, width, 4), np.uint8)
    array[:, : width // 2] = (220, 30, 30, 255)
    array[:, width // 2 :] = (0, 255, 0, 0)
    return array


def build_tree(root: Path) -> dict[str, Path]:
    """Nested folders holding every supported mode plus bad inputs; returns name -> path."""
    files: dict[str, Path] = {}

    def path(rel: str) -> Path:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        files[rel] = target
        return target

    Image.fromarray(gradient(12, 20)).save(path("rgb.png"), dpi=(72, 72), icc_profile=srgb_icc())
    Image.fromarray(rgba_with_hidden_green()).save(path("alpha/rgba.png"))
    la = np.stack([gradient(10, 14, 1)[..., 0], np.where(np.arange(14) < 7, 255, 0)[None, :].repeat(10, 0)], -1)
    Image.fromarray(la.astype(np.uint8)).save(path("alpha/la.png"))
    Image.fromarray(gradient(10, 14, 1)[..., 0]).save(path("grey/l.png"))
    Image.fromarray(gradient(10, 14, 1, 65535)[..., 0]).save(path("grey/deep/i16.png"))
    write_png16(path("deep/rgb16.png"), gradient(12, 10, 3, 65535))
    tifffile.imwrite(
        path("deep/rgb16.tif"),
        gradient(10, 12, 3, 65535),
        photometric="rgb",
        resolution=(300, 300),
        resolutionunit="INCH",
        iccprofile=srgb_icc(),
        metadata=None,
    )
    palette = Image.fromarray(gradient(12, 12)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(path("palette/p.png"))
    palette.save(path("palette/p.gif"))
    cmyk = Image.new("CMYK", (20, 12), (0, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 10, 12))  # left half black ink, right half paper white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    exif[0x010F] = MAKE
    cmyk.save(path("photos/cmyk.jpg"), quality=95, icc_profile=cmyk_icc(), exif=exif.tobytes(), dpi=(300, 300))
    frames = [Image.new("P", (10, 8), i * 60) for i in range(3)]
    for i, frame in enumerate(frames):
        frame.putpalette([v for c in range(256) for v in (c, 255 - c, (c * 7) % 256)])
        frame.paste(200 - i * 40, (i * 3, 0, i * 3 + 3, 8))
    frames[0].save(path("anim/anim.gif"), save_all=True, append_images=frames[1:], duration=[80, 120, 160], loop=0)

    path("notes.txt").write_text("not an image\n")
    path("bad/empty.png").write_bytes(b"")
    path("bad/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" + bytes(range(256)))
    buffer = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(buffer, "PNG")
    path("bad/truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / ".hidden.png").write_bytes(buffer.getvalue())  # hidden: passed over silently
    return files
