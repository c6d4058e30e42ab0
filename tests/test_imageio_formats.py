"""hat_cli.imageio and the pixel side of hat_cli.batch: modes, bit depths, metadata, bad files, atomic writes."""

from __future__ import annotations

import errno
import io
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from hat_cli import imageio
from hat_cli.atomic import TEMP_SUFFIX, TempFiles
from hat_cli.batch import find_inputs, upscale_picture
from hat_cli.errors import InputImageError, OutputError
from hat_cli.imageio import Picture, read_picture, write_picture
from tests._batch_images import MAKE, Bilinear, build_tree, gradient, rgba_with_hidden_green, srgb_icc


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tree(tmp_path_factory.mktemp("tree"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow_and_removed(tmp_path: Path, orientation: int) -> None:
    source = Image.fromarray(gradient(3, 5))
    exif = source.getexif()
    exif[0x0112] = orientation
    exif[0x010F] = MAKE
    source.save(tmp_path / "o.png", exif=exif.tobytes())
    picture = read_picture(tmp_path / "o.png")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    assert np.array_equal(picture.frames[0], expected)
    assert picture.exif is not None and 0x0112 not in picture.exif and picture.exif[0x010F] == MAKE


@pytest.mark.parametrize(
    ("name", "shape", "dtype"),
    [
        ("rgb.png", (12, 20, 3), np.uint8),
        ("alpha/rgba.png", (16, 16, 4), np.uint8),
        ("alpha/la.png", (10, 14, 2), np.uint8),
        ("grey/l.png", (10, 14, 1), np.uint8),
        ("grey/deep/i16.png", (10, 14, 1), np.uint16),
        ("deep/rgb16.png", (12, 10, 3), np.uint16),
        ("deep/rgb16.tif", (10, 12, 3), np.uint16),
        ("palette/p.png", (12, 12, 3), np.uint8),
        ("palette/p.gif", (12, 12, 3), np.uint8),
    ],
)
def test_every_mode_decodes_to_its_layout_and_depth(
    tree: dict[str, Path], name: str, shape: tuple, dtype: type
) -> None:
    picture = read_picture(tree[name])
    assert len(picture.frames) == 1
    assert picture.frames[0].shape == shape and picture.frames[0].dtype == dtype


def test_16_bit_pixels_are_exact_not_truncated(tree: dict[str, Path]) -> None:
    # Pillow alone would hand back the high bytes only; every low byte must survive.
    assert np.array_equal(read_picture(tree["deep/rgb16.png"]).frames[0], gradient(12, 10, 3, 65535))
    tiff = read_picture(tree["deep/rgb16.tif"])
    assert np.array_equal(tiff.frames[0], gradient(10, 12, 3, 65535))
    assert tiff.icc_profile == srgb_icc() and tiff.dpi == (300, 300)


def test_cmyk_jpeg_is_converted_through_its_profile_upright_and_tagged_srgb(tree: dict[str, Path]) -> None:
    picture = read_picture(tree["photos/cmyk.jpg"])
    frame = picture.frames[0]
    assert frame.shape == (20, 12, 3)  # stored 20x12 sideways, orientation 6 -> 12 wide, 20 high
    # Black ink was on the stored left half; rotated clockwise it is on top.
    assert frame[:8].mean() < 60 and frame[12:].mean() > 200
    assert picture.icc_profile is not None and picture.icc_profile[16:20] == b"RGB "
    description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(picture.icc_profile)))
    assert "sRGB" in description
    assert picture.dpi == (300, 300) and picture.exif is not None and picture.exif[0x010F] == MAKE


def test_animated_gif_keeps_every_frame_and_its_timing(tree: dict[str, Path]) -> None:
    picture = read_picture(tree["anim/anim.gif"])
    assert len(picture.frames) == 3 and picture.durations == [80, 120, 160] and picture.loop == 0
    assert not np.array_equal(picture.frames[0], picture.frames[2])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad/empty.png", "empty file (0 bytes)"),
        ("bad/corrupt.jpg", "corrupt or truncated"),
        ("bad/truncated.png", "corrupt or truncated"),
        ("notes.txt", "not a recognised image"),
    ],
)
def test_bad_files_raise_one_line_naming_file_and_reason(tree: dict[str, Path], name: str, reason: str) -> None:
    with pytest.raises(InputImageError) as caught:
        read_picture(tree[name])
    message = str(caught.value)
    assert message.startswith(str(tree[name])) and reason in message and "\n" not in message


def test_pixel_limit_counts_every_frame(tree: dict[str, Path]) -> None:
    assert read_picture(tree["rgb.png"], max_pixels=240).width == 20  # exactly 20x12 is allowed
    with pytest.raises(InputImageError, match="exceeds the 239-pixel limit"):
        read_picture(tree["rgb.png"], max_pixels=239)
    with pytest.raises(InputImageError, match=r"10x8 x 3 frames exceeds"):
        read_picture(tree["anim/anim.gif"], max_pixels=3 * 80 - 1)


def test_huge_dimensions_are_refused_before_decoding(tmp_path: Path) -> None:
    # A tiny file claiming 100000 x 100000 pixels: refused from the header, never allocated.
    Image.new("L", (1, 1)).save(tmp_path / "bomb.png")
    data = bytearray((tmp_path / "bomb.png").read_bytes())
    data[16:24] = (100_000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid IHDR, only the size lies
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(InputImageError, match="exceeds the 100,000,000-pixel limit"):
        read_picture(tmp_path / "bomb.png")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_round_trip_keeps_pixels_and_metadata(tmp_path: Path, channels: int, suffix: str) -> None:
    frame = gradient(6, 9, min(channels, 3), 65535)
    if channels == 2:
        frame = np.concatenate([frame[..., :1], frame[..., 1:2]], axis=2)
    elif channels == 4:
        frame = np.concatenate([frame, frame[..., :1]], axis=2)
    icc = srgb_icc() if channels >= 3 else None
    exif = Image.Exif()
    exif[0x010F] = MAKE
    picture = Picture([frame], icc_profile=icc, exif=exif, dpi=(150.0, 150.0))
    write_picture(picture, tmp_path / f"out{suffix}")
    back = read_picture(tmp_path / f"out{suffix}")
    assert back.frames[0].dtype == np.uint16 and np.array_equal(back.frames[0], frame)
    assert back.icc_profile == icc
    assert back.dpi is not None and back.dpi == pytest.approx((150, 150), abs=0.05)  # PNG stores pixels per metre
    if suffix == ".png":
        assert back.exif is not None and back.exif[0x010F] == MAKE


def test_formats_get_modes_they_can_hold(tmp_path: Path) -> None:
    rgba = rgba_with_hidden_green()
    picture = Picture([rgba], icc_profile=srgb_icc(), dpi=(100.0, 100.0))
    for suffix, mode in ((".jpg", "RGB"), (".webp", "RGBA"), (".tiff", "RGBA"), (".gif", "P"), (".bmp", "RGB")):
        write_picture(picture, tmp_path / f"out{suffix}")
        with Image.open(tmp_path / f"out{suffix}") as written:
            assert written.mode == mode, suffix
            if suffix in (".jpg", ".webp", ".tiff"):
                assert written.info.get("icc_profile") == srgb_icc(), suffix
    # JPEG and BMP have no alpha: transparent pixels are composited over white, not left as hidden green.
    assert np.asarray(Image.open(tmp_path / "out.jpg"))[:, -4:].min() > 235
    assert np.asarray(Image.open(tmp_path / "out.bmp"))[:, -4:].min() == 255
    grey = Picture([gradient(8, 8, 1)], icc_profile=srgb_icc())
    write_picture(grey, tmp_path / "grey.webp")  # WebP has no grey mode, and an RGB profile fits again
    assert Image.open(tmp_path / "grey.webp").mode == "RGB"


def test_jpeg_quality_is_applied(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_picture(Picture([noise]), tmp_path / "low.jpg", quality=20)
    write_picture(Picture([noise]), tmp_path / "high.jpg", quality=95)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size / 2


def test_animation_cannot_become_a_jpeg(tmp_path: Path, tree: dict[str, Path]) -> None:
    with pytest.raises(OutputError, match="cannot hold the 3 frames"):
        write_picture(read_picture(tree["anim/anim.gif"]), tmp_path / "anim.jpg")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_no_file_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(picture: Picture, handle: io.BufferedWriter, fmt: str, quality: int | None) -> None:
        handle.write(b"\x89PNG half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imageio, "_encode", full)
    with pytest.raises(OutputError, match=r"out\.png: cannot write \(disk full\)"):
        write_picture(Picture([gradient(4, 4)]), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        write_picture(Picture([gradient(4, 4)]), target, overwrite=False)
    assert target.read_bytes() == b"precious" and len(list(tmp_path.iterdir())) == 1
    write_picture(Picture([gradient(4, 4)]), target, overwrite=True)
    assert Image.open(target).size == (4, 4)


def test_abort_removes_files_being_written_and_refuses_new_ones(tmp_path: Path) -> None:
    temps = TempFiles()
    fd, tmp = temps.create(tmp_path / "out.png")
    assert tmp.parent == tmp_path and tmp.name.startswith(".out.png.") and tmp.name.endswith(TEMP_SUFFIX)
    with open(fd, "wb") as handle:
        handle.write(b"partial")
        assert tmp.exists()
        temps.discard_all()
        handle.write(b" more")  # the writer may still be going: it writes into an unnamed file
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="stopped"):
        temps.create(tmp_path / "next.png")


def test_transparent_colour_does_not_bleed_into_visible_pixels() -> None:
    rgba = rgba_with_hidden_green()
    # The premise: upscaling colour naively blends the hidden green into the visible edge.
    naive = Bilinear().upscale_tensor(torch.from_numpy(rgba[..., :3] / 255.0).permute(2, 0, 1)[None].float())
    assert naive[0, 1].max() > 0.3
    out = upscale_picture(Bilinear(), Picture([rgba]))
    frame = out.frames[0]
    assert frame.shape == (32, 32, 4) and frame.dtype == np.uint8
    visible = frame[..., 3] > 0
    assert visible[:, :16].all() and not visible[:, -6:].any()
    assert frame[..., 1][visible].max() <= 31  # the red area's own green (30), nothing more
    assert np.abs(frame[..., 0][visible].astype(int) - 220).max() <= 1


def test_alpha_through_the_model_on_request() -> None:
    upscaler = Bilinear()
    out = upscale_picture(upscaler, Picture([rgba_with_hidden_green()]), alpha="model")
    assert upscaler.calls == 2 and out.frames[0].shape == (32, 32, 4)


def test_grey_and_16_bit_stay_grey_and_16_bit() -> None:
    grey16 = gradient(6, 8, 1, 65535)
    out = upscale_picture(Bilinear(), Picture([grey16], dpi=(72.0, 96.0)))
    assert out.frames[0].shape == (12, 16, 1) and out.frames[0].dtype == np.uint16
    assert out.dpi == (144.0, 192.0)
    # Equal R, G, B through the model and back to luminance: the grey values are unchanged on average.
    assert abs(float(out.frames[0].mean()) - float(grey16.mean())) < 65535 * 0.01


def test_find_inputs_reports_unreadable_folders_and_goes_on(
    tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree["rgb.png"].parent
    real_scandir = os.scandir

    def scandir(path: Path):  # root cannot bypass permissions, so refuse one folder by hand
        if Path(path).name == "grey":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("hat_cli.imagefiles.os.scandir", scandir)
    sources, results = find_inputs([root], recursive=True)
    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 1 and failed[0].error == f"{root / 'grey'}: cannot read folder (Permission denied)"
    names = {s.path.name for s in sources}
    assert "rgb.png" in names and "rgba.png" in names and "l.png" not in names
    assert [r.input.name for r in results if r.status == "ignored"] == ["notes.txt"]


def test_animated_webp_is_upscaled_frame_by_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(gradient(8, 10)).rotate(90 * i) for i in range(3)]
    frames[0].save(tmp_path / "a.webp", save_all=True, append_images=frames[1:], duration=[50, 70, 90], loop=2)
    picture = read_picture(tmp_path / "a.webp")
    assert len(picture.frames) == 3 and picture.durations == [50, 70, 90] and picture.loop == 2
    write_picture(upscale_picture(Bilinear(), picture), tmp_path / "b.webp")
    with Image.open(tmp_path / "b.webp") as out:
        assert out.n_frames == 3 and out.size == (20, 16) and out.info["loop"] == 2


def test_symlinked_folder_loops_are_walked_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.fromarray(gradient(4, 4)).save(tmp_path / "sub/a.png")
    (tmp_path / "sub/loop").symlink_to(tmp_path)
    sources, results = find_inputs([tmp_path], recursive=True)
    assert [s.path for s in sources] == [tmp_path / "sub/a.png"] and results == []


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow warns as it gives up; we raise
def test_damaged_tiff_that_pillow_rejects_is_still_one_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + bytes(range(60)))
    with pytest.raises(InputImageError, match=r"bad\.tif: (corrupt|not a recognised)"):
        read_picture(tmp_path / "bad.tif")


def test_cmyk_conversion_gives_the_same_bytes_every_run(tree: dict[str, Path]) -> None:
    """The sRGB profile made for CMYK inputs carries no creation time: identical runs, identical files."""
    first = read_picture(tree["photos/cmyk.jpg"]).icc_profile
    time.sleep(1.05)  # lcms stamps whole seconds
    second = read_picture(tree["photos/cmyk.jpg"]).icc_profile
    assert first is not None and first == second and first[24:36] == bytes(12)
