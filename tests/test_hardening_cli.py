"""Hardening (issue 13), the CLI: user text is never markup (D1), hostile pictures and names are
one line with a documented exit code (D8, D16, D17, D18, D19, D22, float TIFF), options are checked
before work starts (D14, D20, --tile), no images found is not success, a strict or closed stdout
ends cleanly (D10, D15), and the README's exit-code table is the code's."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from rich.console import Console

from hat_cli import errors
from hat_cli.cli.progress import counter_bar
from hat_cli.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_STDOUT_CLOSED, EXIT_USAGE
from tests._batch_images import gradient, save_tiny_weights
from tests._hardening import ROOT, child_env, hat, one_error, save_png, temp_files
from tests.store_server import write_registry

NAME_MAX = 255


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def bomb_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A PNG whose header declares ``width x height`` but holds almost nothing (a 100 KB-class bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (3 * width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# -------------------------------------------------------------------------------------------- D1
MARKUP_NAMES = ["a[/]b.png", "[final].png", "[bold]x[/bold].png", ":smile:.png"]  # a[/]b: folder "a[", file "]b.png"


def test_d1_file_names_in_error_lines_are_text_not_markup(tmp_path: Path, weights: Path) -> None:
    for name in MARKUP_NAMES:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = hat("upscale", tmp_path / "in", "-r", "-o", tmp_path / "out", "--weights", weights)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    errors_ = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(line.split(": ", 2)[1] for line in errors_) == sorted(str(tmp_path / "in" / n) for n in MARKUP_NAMES)


def test_d1_internal_error_with_markup_is_still_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("bug in [/] and [bold]here")

    monkeypatch.setattr(sys.modules["hat_cli.cli.upscale"], "find_inputs", broken)
    result = hat("upscale", tmp_path / "x.png", "--model", "bicubic", "-s", "2")
    assert result.exit_code == errors.EXIT_INTERNAL
    assert result.stderr.splitlines() == [
        "internal error: RuntimeError: bug in [/] and [bold]here (rerun with HAT_DEBUG=1 for the traceback)"
    ]


def test_d1_verbose_lines_and_newlines_in_names_stay_one_line(tmp_path: Path, weights: Path) -> None:
    image = save_png(tmp_path / "[v]\nx.png")
    result = hat("upscale", image, "-o", tmp_path / "o.png", "--weights", weights, "-v")
    assert result.exit_code == 0, result.output
    threads, verbose = result.stderr.splitlines()  # --verbose also reports the CPU threads used
    assert threads.startswith("CPU threads: ")
    assert verbose.startswith(str(tmp_path / "[v]\\nx.png") + ": whole image")


def test_d1_registry_names_in_the_models_table_are_text(tmp_path: Path, cache: Path) -> None:
    registry = write_registry(
        tmp_path / "r.toml",
        {"mine-x4": {"family": "hat-tiny", "scale": 4, "file": "m.pth", "sha256": "a" * 64, "aliases": ["[red]x[/]"]}},
    )
    result = hat("models", "list", "--registry", registry)
    assert result.exit_code == 0 and "[red]x[/]" in result.stdout, result.output


def test_d1_bench_table_shows_image_and_model_names_as_they_are(tmp_path: Path, weights: Path) -> None:
    hr = tmp_path / "h[/]r"
    for name in ("[final]", "a[b]"):
        save_png(hr / f"{name}.png", 16, 16)
    custom = tmp_path / "[red]w.safetensors"
    custom.write_bytes(weights.read_bytes())
    result = hat("bench", "--hr", hr, "-s", "2", "--model", "bicubic", "--weights", custom)
    assert result.exit_code == 0, result.output
    for text in ("h[/]r x2", "[final]", "a[b]", "[red]w.safetensor"):
        assert text in result.stdout, text


def test_d1_progress_descriptions_are_not_markup() -> None:
    out = io.StringIO()
    with counter_bar(console=Console(file=out, force_terminal=True, width=100)) as bar:
        task = bar.add_task("a[/]b.png", total=2)
        bar.update(task, advance=1, description="[final] [bold]x")
        bar.refresh()
    assert "[final] [bold]x" in out.getvalue()


# ------------------------------------------------------------------------------------------- D8
def test_d8_one_pixel_limit_and_one_message_in_upscale_and_bench(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "hr" / "bomb.png") if (tmp_path / "hr").mkdir() is None else None
    assert bomb is not None and bomb.stat().st_size < 200_000
    save_png(tmp_path / "hr" / "ok.png", 16, 16)
    expected = f"error: {bomb}: 12000x12000 exceeds the 100,000,000-pixel limit (raise --max-pixels)"
    up = hat("upscale", bomb, "--model", "bicubic", "-s", "2", "-o", tmp_path / "o.png")
    assert up.exit_code == EXIT_SOME_FAILED and up.stderr.splitlines() == [expected]
    bench = hat("bench", "--hr", tmp_path / "hr", "-s", "2", "--model", "bicubic", "--json")
    assert bench.exit_code == EXIT_SOME_FAILED, bench.output
    assert expected in bench.stderr.splitlines()
    assert [image["name"] for image in json.loads(bench.stdout)["models"][0]["images"]] == ["ok"]
    # --max-pixels means the same in both: a tighter limit refuses the 16x16 image too.
    small = hat("bench", "--hr", tmp_path / "hr", "-s", "2", "--model", "bicubic", "--max-pixels", "100")
    assert small.exit_code == EXIT_SOME_FAILED
    assert f"error: {tmp_path / 'hr' / 'ok.png'}: 16x16 exceeds the 100-pixel limit (raise --max-pixels)" in (
        small.stderr.splitlines()
    )


def test_d8_every_command_says_it_in_the_same_one_line_without_pillow_warnings(tmp_path: Path) -> None:
    """In fresh processes (a test before may have silenced Pillow's warnings in this one)."""
    (tmp_path / "hr").mkdir()
    bomb = bomb_png(tmp_path / "hr" / "bomb.png")
    huge = bomb_png(tmp_path / "huge.png", 20000, 20000)  # over twice the limit: Pillow's own guard fires
    limit = "exceeds the 100,000,000-pixel limit (raise --max-pixels)"
    cases = [
        (["upscale", bomb, "-m", "bicubic", "-s", "2", "-o", tmp_path / "o.png"], f"{bomb}: 12000x12000 {limit}"),
        (["bench", "--hr", tmp_path / "hr", "-s", "2", "-m", "bicubic", "--json"], f"{bomb}: 12000x12000 {limit}"),
        (["lam", bomb, "-m", "hat-tiny", "-s", "4", "--at", "0,0"], f"{bomb}: 12000x12000 {limit}"),
        (
            ["upscale", huge, "-m", "bicubic", "-s", "2", "-o", tmp_path / "o.png"],
            f"{huge}: 400,000,000-pixel image {limit}",
        ),
        (["lam", huge, "-m", "hat-tiny", "-s", "4", "--at", "0,0"], f"{huge}: 400,000,000-pixel image {limit}"),
    ]
    for args, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "hat_cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
        )
        errors_only = [line for line in done.stderr.splitlines() if "could not be scored" not in line]
        assert (done.returncode, errors_only) == (EXIT_SOME_FAILED, [f"error: {message}"]), (args, done.stderr)


def test_d8_the_output_size_is_bounded_before_the_work(tmp_path: Path) -> None:
    """--outscale/--width/--height may not ask for more than --max-pixels x scale^2 pixels."""
    source = save_png(tmp_path / "a.png", 8, 8)
    for flags, size in (
        (["--height", "99999999"], "99999999x99999999"),
        (["--outscale", "1e9"], "8000000000x8000000000"),
    ):
        line = one_error(hat("upscale", source, "-m", "bicubic", "-s", "2", *flags, "-o", tmp_path / "o.png"), 1)
        assert line == (
            f"error: {source}: the output would be {size}, over the 400,000,000-pixel output limit "
            "(--max-pixels x scale^2): lower --outscale/--width/--height or raise --max-pixels"
        )
    limited = ["--max-pixels", "64", "-o", tmp_path / "o.png"]  # 8x8 in: at most 64 x 2^2 = 256 pixels out
    assert hat("upscale", source, "-m", "bicubic", "-s", "2", "--width", "17", *limited).exit_code == EXIT_SOME_FAILED
    assert hat("upscale", source, "-m", "bicubic", "-s", "2", "--width", "16", *limited).exit_code == EXIT_OK
    assert temp_files(tmp_path) == []


# ------------------------------------------------------------------------------------------ D22
def test_d22_animation_frames_count_against_the_limit(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), (i, 255 - i, i // 2)) for i in range(200)]  # all different: none merged
    gif = tmp_path / "many.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=20)
    # 200 frames of 8x8 are 12,800 pixels, but 200 forward passes: each frame counts >= 128x128.
    result = hat("upscale", gif, "--model", "bicubic", "-s", "2", "-o", tmp_path / "o.gif", "--max-pixels", "1000000")
    line = one_error(result, EXIT_SOME_FAILED)
    assert line == f"error: {gif}: 8x8 x 200 frames exceeds the 1,000,000-pixel limit (raise --max-pixels)"
    few = tmp_path / "few.gif"
    frames[0].save(few, save_all=True, append_images=frames[1:3], duration=20)
    ok = hat("upscale", few, "--model", "bicubic", "-s", "2", "-o", tmp_path / "o2.gif", "--max-pixels", "1000000")
    assert ok.exit_code == EXIT_OK, ok.output
    with Image.open(tmp_path / "o2.gif") as out:
        assert out.n_frames == 3 and out.size == (16, 16)


# ------------------------------------------------------------------------------------------ D16
def test_d16_output_names_up_to_255_bytes_work(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "in"
    lengths = [237, 240, 246, 254, 255]
    for length in lengths:
        save_png(folder / ("n" * (length - len("_x2.png")) + ".png"))
    wide = "é" * ((NAME_MAX - len("_x2.png")) // 2)  # 2-byte characters: the temp name must not split one
    save_png(folder / f"{wide}.png")
    result = hat("upscale", folder, "-o", tmp_path / "out", "--weights", weights, "--json")
    assert result.exit_code == EXIT_OK, result.output
    written = sorted(len(os.fsencode(p.name)) for p in (tmp_path / "out").iterdir())
    assert written == sorted([*lengths, len(os.fsencode(wide + "_x2.png"))])
    assert temp_files(tmp_path) == []


def test_d16_a_name_over_255_bytes_is_one_line(tmp_path: Path, weights: Path) -> None:
    image = save_png(tmp_path / ("n" * (NAME_MAX - 6) + ".png"))  # output name: 256 bytes
    line = one_error(hat("upscale", image, "--weights", weights), EXIT_SOME_FAILED)
    assert "File name too long" in line


# ------------------------------------------------------------------------------------------ D17
def test_d17_ico_output_larger_than_256_is_refused_before_upscaling(tmp_path: Path, weights: Path) -> None:
    big = save_png(tmp_path / "big.png", 200, 150)
    line = one_error(hat("upscale", big, "-o", tmp_path / "big.ico", "--weights", weights), EXIT_SOME_FAILED)
    assert (
        line
        == f"error: {tmp_path / 'big.ico'}: ICO holds at most 256x256 pixels, the output is 300x400 (use --format png or tiff)"
    )
    assert not (tmp_path / "big.ico").exists()
    small = save_png(tmp_path / "small.png", 100, 60)
    assert hat("upscale", small, "-o", tmp_path / "small.ico", "--weights", weights).exit_code == EXIT_OK
    with Image.open(tmp_path / "small.ico") as ico:
        assert ico.size == (120, 200)


def test_d17_icns_which_stores_fixed_icon_sizes_is_never_written(tmp_path: Path, weights: Path) -> None:
    source = save_png(tmp_path / "a.png", 24, 24)
    line = one_error(hat("upscale", source, "-o", tmp_path / "a.icns", "--weights", weights), EXIT_USAGE)
    assert ".icns is not an image format hat writes" in line and not (tmp_path / "a.icns").exists()
    with Image.open(source) as image:
        image.save(tmp_path / "icon.icns")  # an .icns input is read at its largest icon, written as PNG
    with Image.open(tmp_path / "icon.icns") as icon:
        width, height = icon.size
    assert hat("upscale", tmp_path / "icon.icns", "-m", "bicubic", "-s", "2").exit_code == EXIT_OK
    with Image.open(tmp_path / "icon_x2.png") as out:
        assert out.format == "PNG" and out.size == (2 * width, 2 * height)
    to_stdout = hat("upscale", tmp_path / "icon.icns", "-m", "bicubic", "-s", "2", "-o", "-")  # a PNG there too
    assert to_stdout.exit_code == EXIT_OK and to_stdout.stdout_bytes.startswith(b"\x89PNG"), to_stdout.stderr


# ------------------------------------------------------------------------------------------ D18
def test_d18_o_with_a_non_image_extension_is_refused_not_made_a_folder(tmp_path: Path, weights: Path) -> None:
    a, b = save_png(tmp_path / "a.png"), save_png(tmp_path / "b.png")
    for inputs in ([a, b], [a]):
        line = one_error(hat("upscale", *inputs, "-o", tmp_path / "result.txt", "--weights", weights), EXIT_USAGE)
        assert f"-o {tmp_path / 'result.txt'}: no such folder" in line and "result.txt/" in line
        assert not (tmp_path / "result.txt").exists()


def test_d18_a_trailing_slash_always_means_a_folder(tmp_path: Path, weights: Path) -> None:
    a, b = save_png(tmp_path / "a.png"), save_png(tmp_path / "b.png")
    result = hat("upscale", a, "-o", f"{tmp_path / 'newdir.png'}/", "--weights", weights)
    assert result.exit_code == EXIT_OK, result.output
    assert (tmp_path / "newdir.png").is_dir() and (tmp_path / "newdir.png" / "a_x2.png").is_file()
    result = hat("upscale", a, b, "-o", f"{tmp_path / 'result.txt'}/", "--weights", weights)
    assert result.exit_code == EXIT_OK, result.output
    assert sorted(p.name for p in (tmp_path / "result.txt").iterdir()) == ["a_x2.png", "b_x2.png"]
    # a file where the slash asks for a folder is refused, and so is an existing file that is no image
    line = one_error(hat("upscale", a, "-o", f"{a}/", "--weights", weights), EXIT_USAGE)
    assert "is a file" in line and "must be a folder" in line
    for existing in ("notes.txt", "README"):
        (tmp_path / existing).write_text("keep me")
        line = one_error(hat("upscale", a, "-o", tmp_path / existing, "--weights", weights), EXIT_USAGE)
        assert line.endswith(
            "is a file, and not an image hat writes: name an image (.png, .jpg, .webp, .tiff) or a folder"
        )
        assert (tmp_path / existing).read_text() == "keep me"


def test_d16_names_too_long_for_the_file_system_are_one_line_and_the_batch_goes_on(
    tmp_path: Path, weights: Path
) -> None:
    a = save_png(tmp_path / "a.png")
    long_input = tmp_path / ("z" * 300 + ".png")
    result = hat("upscale", a, long_input, "-o", tmp_path / "out", "--weights", weights)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        f"error: {long_input}: cannot read (File name too long)"
    ]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x2.png"]
    line = one_error(hat("upscale", a, "-o", tmp_path / ("o" * 300 + ".png"), "--weights", weights), EXIT_USAGE)
    assert line.endswith("unusable name (File name too long)")


def test_o_file_and_format_must_agree(tmp_path: Path, weights: Path) -> None:
    a = save_png(tmp_path / "a.png")
    line = one_error(hat("upscale", a, "-o", tmp_path / "x.jpeg", "--format", "png", "--weights", weights), EXIT_USAGE)
    assert line.endswith("and --format png disagree: name the file .png or drop --format")
    assert hat("upscale", a, "-o", tmp_path / "x.jpeg", "--format", "jpg", "--weights", weights).exit_code == EXIT_OK


def test_d18_existing_folders_and_extensionless_names_stay_folders(tmp_path: Path, weights: Path) -> None:
    a = save_png(tmp_path / "a.png")
    (tmp_path / "v1.2").mkdir()
    assert hat("upscale", a, "-o", tmp_path / "v1.2", "--weights", weights).exit_code == EXIT_OK
    assert (tmp_path / "v1.2" / "a_x2.png").is_file()
    assert hat("upscale", a, "-o", tmp_path / "fresh", "--weights", weights).exit_code == EXIT_OK
    assert (tmp_path / "fresh" / "a_x2.png").is_file()


# ------------------------------------------------------------------------------------------ D19
def _deep(root: Path, levels: int) -> Path:
    folder = root
    for _ in range(levels):
        folder = folder / "d"
        folder.mkdir()  # os.makedirs would recurse once per level
    return folder


def _remove_deep(root: Path) -> None:
    """rmtree and os.walk recurse once per level on Python 3.11: remove bottom-up by hand."""
    folders = [root]
    while folders:
        folder = folders[-1]
        subfolders = [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
        if subfolders:
            folders += subfolders
            continue
        for entry in os.scandir(folder):
            os.unlink(entry.path)
        if folder != root:
            folder.rmdir()
        folders.pop()


def test_d19_a_1100_level_tree_is_walked_and_mirrored() -> None:
    # Not under pytest's tmp_path: its cleanup (shutil.rmtree) recurses once per level on Python
    # 3.11 and would crash on a tree left by an interrupted run. This one is removed by hand.
    tmp_path = Path(tempfile.mkdtemp(prefix="hat-deep-"))
    root = tmp_path / "in"
    root.mkdir()
    try:
        bottom = _deep(root, 1100)
        save_png(bottom / "deep.png")
        save_png(root / "top.png")
        result = hat("upscale", root, "-r", "-o", tmp_path / "out", "--model", "bicubic", "-s", "2", "--json")
        assert result.exit_code == EXIT_OK, result.output
        assert json.loads(result.stdout.splitlines()[-1])["done"] == 2
        mirrored = tmp_path / "out" / bottom.relative_to(root) / "deep_x2.png"
        assert mirrored.is_file()
    finally:
        _remove_deep(tmp_path)
        tmp_path.rmdir()


# ------------------------------------------------------------------------------------------ D20
def test_d20_train_refuses_a_folder_as_out_before_training(tmp_path: Path) -> None:
    for index in range(2):
        Image.fromarray(gradient(32, 32)).save(save_png(tmp_path / "hr" / f"{index}.png"))
    (tmp_path / "existing").mkdir()
    arch = "embed_dim=8,depths=1,num_heads=2,window_size=4,compress_ratio=2,squeeze_factor=4"
    common = ["--hr", tmp_path / "hr", "--scale", "2", "--arch", arch, "--patch-size", "16", "--batch-size", "1"]
    line = one_error(hat("train", *common, "--iters", "100000", "--out", tmp_path / "existing"), EXIT_USAGE)
    assert "is a folder" in line
    assert list((tmp_path / "existing").iterdir()) == []
    # The neighbour: a file name with markup in it trains and is reported as it is.
    out = tmp_path / "[w].pth"
    ok = hat("train", *common, "--iters", "1", "--val-every", "0", "--out", out)
    assert ok.exit_code == EXIT_OK and out.is_file() and f"wrote {out}" in ok.stdout, ok.output


# ------------------------------------------------------------------------------------------ D14
@pytest.mark.parametrize("device", ["xpu", "meta", "hpu", "cpu:1", "cuda:x", "nope"])
def test_d14_unsupported_devices_are_usage_errors(tmp_path: Path, weights: Path, device: str) -> None:
    image = save_png(tmp_path / "a.png")
    line = one_error(hat("upscale", image, "--weights", weights, "--device", device), EXIT_USAGE)
    assert device in line and "use auto, cpu, cuda, cuda:N or mps" in line


# -------------------------------------------------------------------------- no images / formats
def test_no_images_found_is_not_success(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert one_error(hat("upscale", tmp_path / "empty", "--model", "bicubic", "-s", "2"), EXIT_SOME_FAILED) == (
        "error: no images found"
    )
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    result = hat("upscale", tmp_path / "texts", "--model", "bicubic", "-s", "2", "--json")
    assert result.exit_code == EXIT_SOME_FAILED
    assert json.loads(result.stdout.splitlines()[-1])["exit_code"] == EXIT_SOME_FAILED
    assert "error: no images found (1 non-image file ignored)" in result.stderr


@pytest.mark.parametrize(
    ("dtype", "channels", "bits"), [(np.float32, 3, 32), (np.float32, 1, 32), (np.float16, 3, 16)], ids=str
)
def test_float_tiff_is_called_floating_point_not_16_bit(tmp_path: Path, dtype, channels: int, bits: int) -> None:
    path = tmp_path / "f.tif"
    data = np.random.default_rng(0).random((8, 8, channels)).astype(dtype)
    tifffile.imwrite(path, data[..., 0] if channels == 1 else data, photometric="rgb" if channels == 3 else None)
    line = one_error(hat("upscale", path, "--model", "bicubic", "-s", "2"), EXIT_SOME_FAILED)
    assert f"{bits}-bit floating-point images are not supported" in line and "16-bit TIFF" not in line


def test_tile_sizes_round_down_to_a_window_multiple_and_never_below_one(tmp_path: Path, weights: Path) -> None:
    """README: rounded down to a window multiple (4 for this model), at least one window."""
    image = save_png(tmp_path / "a.png", 16, 16)
    for tile, used in (("3", 4), ("13", 12)):
        result = hat("upscale", image, "-o", tmp_path / f"o{tile}.png", "--weights", weights, "--tile", tile, "-v")
        assert result.exit_code == 0, result.output
        assert f"tiles of {used} px" in result.stderr, result.stderr
    readme = (ROOT / "README.md").read_text()
    assert "rounded down to a multiple of the network's window" in readme and "`--tile 7`" in readme


# ----------------------------------------------------------------------------------- D10 and D15
CHILD_SLOW = """
import os, sys, time
import hat_cli.api as api
from hat_cli.cli import main

def slowed(method):
    def slow(self, *args, **kwargs):
        time.sleep(float(os.environ.get("SLOW_MODEL", "0")))
        return method(self, *args, **kwargs)
    return slow
api.Upscaler.upscale_array = slowed(api.Upscaler.upscale_array)
api.Upscaler.upscale_tensor = slowed(api.Upscaler.upscale_tensor)
sys.argv = ["hat", *sys.argv[1:]]
main()
"""


def _child(args: list, **kwargs) -> subprocess.Popen:
    env = child_env(**kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-c", CHILD_SLOW, *map(os.fsdecode, args)], env=env, **kwargs)


def test_d10_undecodable_file_names_with_a_strict_stdout(tmp_path: Path, weights: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"\xff.png", b"ok.png", b"\xe9t\xe9.png"):
        Image.fromarray(gradient(8, 8)).save(os.path.join(os.fsencode(folder), name))
    (Path(os.fsdecode(os.path.join(os.fsencode(folder), b"\xfe.png")))).write_bytes(b"not a png")
    args = ["upscale", folder, "-o", tmp_path / "out", "--weights", weights]
    child = _child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PYTHONIOENCODING": "utf-8:strict"})
    try:
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == EXIT_SOME_FAILED, stderr
    assert "Traceback" not in stderr.decode() and "internal error" not in stderr.decode()
    [error] = [line for line in stderr.decode().splitlines() if line.startswith("error")]
    assert "\\xfe.png: not a recognised image" in error
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == [b"ok_x2.png", b"\xe9t\xe9_x2.png", b"\xff_x2.png"]
    text = stdout.decode("utf-8")  # valid UTF-8: the undecodable bytes are written as \xNN
    assert "\\xff_x2.png" in text and "\\xe9t\\xe9_x2.png" in text


def test_d15_a_closed_pipe_ends_quietly_and_leaves_valid_outputs(tmp_path: Path, weights: Path) -> None:
    for index in range(6):
        save_png(tmp_path / "in" / f"{index}.png", 8, 8 + index)
    args = ["upscale", tmp_path / "in", "-o", tmp_path / "out", "--weights", weights, "--json"]
    child = _child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"SLOW_MODEL": "0.3"})
    try:
        assert len(child.stdout.read(10)) == 10  # like `| head -c 10`
        child.stdout.close()
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == EXIT_STDOUT_CLOSED, stderr
    assert stderr == b""
    written = sorted((tmp_path / "out").iterdir())
    assert 1 <= len(written) < 6 and temp_files(tmp_path) == []
    for path in written:
        with Image.open(path) as image:
            image.load()


def test_d15_a_full_stdout_is_one_line(tmp_path: Path, weights: Path) -> None:
    save_png(tmp_path / "in" / "a.png")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD_SLOW,
                "upscale",
                *map(str, (tmp_path / "in", "-o", tmp_path / "out", "-w", weights)),
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            env=child_env(),
            timeout=120,
        )
    assert done.returncode == EXIT_SOME_FAILED
    assert done.stderr.decode().splitlines() == ["error: cannot write to standard output (No space left on device)"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x2.png"]  # the output itself is fine


FULL_STDOUT = "error: cannot write to standard output (No space left on device)"


@pytest.mark.parametrize(
    "args",
    [["--version"], ["-h"], ["upscale", "-h"], ["models", "-h"], ["models", "list", "-h"], ["bench", "-h"]],
    ids=" ".join,
)
def test_d15_help_and_version_into_a_full_stdout_are_one_line(args: list[str]) -> None:
    """--help and --version are written while the command line is parsed, before the command runs."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "hat_cli", *args], stdout=full, stderr=subprocess.PIPE, env=child_env(), timeout=60
        )
    assert (done.returncode, done.stderr.decode().splitlines()) == (EXIT_SOME_FAILED, [FULL_STDOUT])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["upscale", "-h"], ["models", "-h"]], ids=" ".join)
def test_d15_help_and_version_into_a_closed_pipe_end_quietly_with_141(args: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`hat --help | true`)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hat_cli", *args], stdout=write, stderr=subprocess.PIPE, env=child_env(), timeout=60
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (EXIT_STDOUT_CLOSED, b"")


def test_d15_an_image_to_a_full_stdout_is_one_line(tmp_path: Path, weights: Path) -> None:
    source = save_png(tmp_path / "a.png")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", CHILD_SLOW, "upscale", str(source), "-o", "-", "-w", str(weights), "-q"],
            stdout=full,
            stderr=subprocess.PIPE,
            env=child_env(),
            timeout=120,
        )
    assert (done.returncode, done.stderr.decode().splitlines()) == (EXIT_SOME_FAILED, [FULL_STDOUT])


@pytest.mark.parametrize("closed", [0, 1, 2], ids=["stdin", "stdout", "stderr"])
def test_d15_a_closed_standard_stream_is_discarded_and_the_batch_runs(
    tmp_path: Path, weights: Path, closed: int
) -> None:
    """``hat ... >&-`` (or 2>&-, <&-): Python starts with that stream None; hat gives it /dev/null."""
    for index in range(3):
        save_png(tmp_path / "in" / f"{index}.png")
    args = ["upscale", tmp_path / "in", "-o", tmp_path / "out", "--weights", weights, "--json"]
    log = tmp_path / "log"
    with open(log, "w") as sink:
        streams = {"stdout": sink, "stderr": sink}
        streams.pop({0: "", 1: "stdout", 2: "stderr"}[closed], None)
        child = _child(args, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(closed), **streams)
        assert child.wait(timeout=120) == EXIT_OK, log.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_x2.png", "1_x2.png", "2_x2.png"]
    assert "internal error" not in log.read_text() and "Traceback" not in log.read_text()


# ------------------------------------------------------------------------------ the exit codes
def test_readme_exit_code_table_is_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    defined = {value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int)}
    assert documented == defined == set(errors.EXIT_CODES) == {0, 1, 2, 3, 4, 130, 141, 143}


def test_readme_exit_code_meanings_are_the_codes_own() -> None:
    """The README's table and ``EXIT_CODES`` (which the help shows) say the same, word for word."""
    section = (ROOT / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", section, re.MULTILINE))
    for code, meaning in errors.EXIT_CODES.items():
        assert rows[str(code)].replace("`", "").replace("\\|", "|") == meaning, code


def test_every_typed_error_maps_to_a_documented_code() -> None:
    defined = set(errors.EXIT_CODES)
    for error in vars(errors).values():
        if isinstance(error, type) and issubclass(error, errors.HatError):
            assert error.exit_code in defined, error
