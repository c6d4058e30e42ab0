"""End-to-end ``hat upscale`` on files and folders: outputs, metadata, exit codes, JSON, interrupts."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from hat_cli import imageio
from hat_cli.atomic import TEMP_SUFFIX
from hat_cli.cli import app
from tests._batch_images import MAKE, build_tree, gradient, save_tiny_weights

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def run(*args: str | Path, input: str | None = None):
    return runner.invoke(app, ["upscale", *map(str, args)], input=input)


def json_lines(stdout: str) -> tuple[dict[str, dict], dict]:
    objects = [json.loads(line) for line in stdout.splitlines()]
    assert objects[-1]["type"] == "summary" and all(o["type"] == "file" for o in objects[:-1])
    return {Path(o["input"]).name: o for o in objects[:-1]}, objects[-1]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_folder_tree_with_every_mode_and_bad_files(tmp_path: Path, weights: Path) -> None:
    build_tree(tmp_path / "in")
    out = tmp_path / "out"
    result = run(tmp_path / "in", "-r", "-o", out, "--weights", weights, "--json")
    assert result.exit_code == 1, result.output
    files, summary = json_lines(result.stdout)

    # Results: every image done, the three broken files failed with their reason, the text file ignored.
    done = {"rgb.png", "rgba.png", "la.png", "l.png", "i16.png", "rgb16.png", "rgb16.tif", "p.png", "p.gif"}
    done |= {"cmyk.jpg", "anim.gif"}
    assert {name for name, o in files.items() if o["status"] == "done"} == done
    assert {name: o["status"] for name, o in files.items() if name not in done} == {
        "notes.txt": "ignored",
        "empty.png": "failed",
        "corrupt.jpg": "failed",
        "truncated.png": "failed",
    }
    assert "empty file (0 bytes)" in files["empty.png"]["error"]
    assert "corrupt or truncated" in files["truncated.png"]["error"]
    assert all(files[n]["output"] is None and files[n]["seconds"] >= 0 for n in ("empty.png", "truncated.png"))
    assert all(o["error"] is None and o["seconds"] > 0 for n, o in files.items() if n in done)
    assert summary | {"seconds": 0} == {
        "type": "summary",
        "done": 11,
        "skipped": 0,
        "failed": 3,
        "ignored": 1,
        "planned": 0,
        "not_started": 0,
        "interrupted": False,
        "seconds": 0,
        "model": "tiny.safetensors",
        "scale": 2,
        "outscale": None,
        "subfolders_skipped": 0,
        "error": None,
        "exit_code": 1,
    }
    # stderr: one line per failure naming the file, then the summary line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all(str(tmp_path / "in" / "bad") in line for line in errors)
    assert "done 11, skipped 0, failed 3, ignored 1 non-image file" in result.stderr
    assert len(result.stderr.splitlines()) == 4  # nothing else: no warnings, no tracebacks

    # Outputs: tree mirrored, keep format, modes and bit depths kept, metadata carried.
    def opened(rel: str) -> Image.Image:
        assert files[Path(rel).name.replace("_x2", "")]["output"] == str(out / rel)
        return Image.open(out / rel)

    expected = {
        "rgb_x2.png": ("RGB", (40, 24)),
        "alpha/rgba_x2.png": ("RGBA", (32, 32)),
        "alpha/la_x2.png": ("LA", (28, 20)),
        "grey/l_x2.png": ("L", (28, 20)),
        "grey/deep/i16_x2.png": ("I;16", (28, 20)),
        "palette/p_x2.png": ("RGB", (24, 24)),
        "palette/p_x2.gif": ("P", (24, 24)),
        "photos/cmyk_x2.jpg": ("RGB", (24, 40)),  # stored 20x12 with orientation 6: upright 12x20, x2
    }
    for rel, (mode, size) in expected.items():
        with opened(rel) as image:
            image.load()  # complete, decodable
            assert (image.mode, image.size) == (mode, size), rel
    with opened("rgb_x2.png") as image:
        assert image.info["icc_profile"] == Image.open(tmp_path / "in/rgb.png").info["icc_profile"]
        assert image.info["dpi"] == pytest.approx((144, 144), abs=0.05)
    with opened("photos/cmyk_x2.jpg") as image:
        exif = image.getexif()
        assert image.info["icc_profile"][16:20] == b"RGB " and image.info["dpi"] == (600, 600)
        assert exif.get(0x010F) == MAKE and 0x0112 not in exif
    with opened("alpha/rgba_x2.png") as image:
        alpha = np.asarray(image)[..., 3]
        assert alpha[:, :14].min() == 255 and alpha[:, -12:].max() == 0
    with opened("anim/anim_x2.gif") as image:
        assert image.n_frames == 3 and image.size == (20, 16)
        durations = []
        for index in range(3):
            image.seek(index)
            durations.append(image.info["duration"])
        assert durations == [80, 120, 160]
    with opened("deep/rgb16_x2.png") as image:
        assert image.size == (20, 24)
    with tifffile.TiffFile(out / "deep/rgb16_x2.tif") as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (20, 24, 3)
        assert 34675 in page.tags and page.tags["XResolution"].value == (600, 1)
    import png

    assert png.Reader(filename=str(out / "deep/rgb16_x2.png")).asDirect()[3]["bitdepth"] == 16
    # Nothing partial or stray: no temp files, no outputs for failed inputs or the text file.
    assert temp_files(tmp_path) == []
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*expected, "anim/anim_x2.gif", "deep/rgb16_x2.png", "deep/rgb16_x2.tif"]
    )

    # A rerun with --skip-existing does no work: nothing written, every image skipped.
    before = mtimes(out)
    again = run(tmp_path / "in", "-r", "-o", out, "--weights", weights, "--json", "--skip-existing")
    files, summary = json_lines(again.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 11, 3)
    assert all(o["seconds"] is None for o in files.values() if o["status"] == "skipped")
    assert mtimes(out) == before and again.exit_code == 1

    # Without --skip-existing or --overwrite, existing outputs are refused and reported, not replaced.
    refused = run(tmp_path / "in/rgb.png", "-o", out, "--weights", weights)
    assert refused.exit_code == 1 and "rgb_x2.png: exists (pass --overwrite" in refused.stderr
    assert mtimes(out) == before
    replaced = run(tmp_path / "in/rgb.png", "-o", out, "--weights", weights, "--overwrite", "--quiet")
    assert replaced.exit_code == 0 and replaced.stdout == "" and replaced.stderr == ""
    assert (out / "rgb_x2.png").stat().st_mtime_ns != before[out / "rgb_x2.png"]


def test_outputs_beside_inputs_and_rerun_skips_without_upscaling_outputs(tmp_path: Path, weights: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(gradient(8, 8)).save(tmp_path / name)
    first = run(tmp_path, "--weights", weights)
    assert first.exit_code == 0
    assert f"{tmp_path / 'a.png'} -> {tmp_path / 'a_x2.png'} (16x16, " in first.stdout
    assert "done 2, skipped 0, failed 0" in first.stderr
    second = run(tmp_path, "--weights", weights, "--skip-existing", "--json")
    files, summary = json_lines(second.stdout)
    assert second.exit_code == 0 and summary["done"] == 0 and summary["skipped"] == 4
    assert files["a_x2.png"]["error"] == f"is the output of {tmp_path / 'a.png'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x2.png", "b.png", "b_x2.png"]


def test_from_list_on_stdin_with_name_template_format_and_quality(tmp_path: Path, weights: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    Image.fromarray(noise).save(tmp_path / "b.png")
    listing = f"{tmp_path / 'a.png'}\n\n{tmp_path / 'missing.png'}\n"
    options = ["-o", tmp_path / "o", "--weights", weights, "--format", "jpg", "--quality", "30"]
    result = run("--from-list", "-", *options, "--name", "{stem}-{scale}x.{ext}", input=listing)
    assert result.exit_code == 1  # missing.png
    assert "missing.png: no such file or folder" in result.stderr
    assert Image.open(tmp_path / "o/a-2x.jpg").format == "JPEG"
    high = run(tmp_path / "b.png", "-o", tmp_path / "o", "-f", "jpg", "--quality", "95", "--weights", weights)
    assert high.exit_code == 0
    assert (tmp_path / "o/a-2x.jpg").stat().st_size < (tmp_path / "o/b_x2.jpg").stat().st_size


def test_glob_dry_run_and_single_output_file(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.fromarray(gradient(8, 8)).save(tmp_path / "sub/keep.png")
    Image.fromarray(gradient(8, 8)).save(tmp_path / "sub/other.jpg")
    dry = run(tmp_path, "-r", "--glob", "*.png", "-o", tmp_path / "out", "--weights", weights, "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines() == [f"{tmp_path / 'sub/keep.png'} -> {tmp_path / 'out/sub/keep_x2.png'}"]
    assert "would upscale 1" in dry.stderr and not (tmp_path / "out").exists()
    single = run(tmp_path / "sub/other.jpg", "-o", tmp_path / "one.webp", "--weights", weights)
    assert single.exit_code == 0
    assert Image.open(tmp_path / "one.webp").format == "WEBP" and Image.open(tmp_path / "one.webp").size == (16, 16)


def test_progress_bar_counts_files_on_a_terminal(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(gradient(8, 8)).save(tmp_path / name)
    # (hat_cli.cli.upscale the attribute is the command function; the module is in sys.modules)
    terminal = Console(stderr=True, force_terminal=True, width=100)
    monkeypatch.setattr(sys.modules["hat_cli.cli.upscale"], "err_console", terminal)
    result = run(tmp_path, "-o", tmp_path / "out", "--weights", weights)
    assert result.exit_code == 0 and "2/2" in result.stderr
    quiet = run(tmp_path, "-o", tmp_path / "out2", "--weights", weights, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_disk_full_fails_that_file_and_the_batch_goes_on(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(gradient(8, 8)).save(tmp_path / name)
    real_encode = imageio._encode

    def encode(picture, handle, fmt, quality):  # the disk fills up while b is written
        if picture.width == 16 and not hasattr(encode, "failed"):
            encode.failed = True
            handle.write(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_encode(picture, handle, fmt, quality)

    monkeypatch.setattr(imageio, "_encode", encode)
    result = run(tmp_path, "-o", tmp_path / "out", "--weights", weights, "--json")
    files, summary = json_lines(result.stdout)
    assert result.exit_code == 1 and (summary["done"], summary["failed"]) == (2, 1)
    assert files["a.png"]["error"] == f"{tmp_path / 'out/a_x2.png'}: cannot write (disk full)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_x2.png", "c_x2.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overwrite", "--skip-existing"], "contradict"),
        (["--name", "{stem}_{size}.{ext}"], "unknown field {size}"),
        (["--name", "sub/{stem}.{ext}"], "must be a file name"),
        (["--name", "{stem:d}.png"], "fields take no format spec"),
        (["--name", "{stem}_{scale:.1f}.png"], "fields take no format spec"),
        (["--name", "{stem:>99999999}.png"], "fields take no format spec"),
        (["--name", "{stem!r}.png"], "fields take no format spec"),
        (["--format", "bmp"], "--format 'bmp'"),
        (["--alpha", "median"], "--alpha 'median'"),
        (["--from-list", "/nonexistent/list.txt"], "--from-list /nonexistent/list.txt: cannot read"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    Image.fromarray(gradient(8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as caught:  # through HatApp, the real error boundary
        app(["upscale", str(tmp_path / "a.png"), "--weights", str(weights), *args], prog_name="hat")
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_no_inputs_and_bad_quality_are_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        app(["upscale"], prog_name="hat")
    assert caught.value.code == 2 and "no inputs" in capsys.readouterr().err
    assert run("x.png", "--quality", "0").exit_code == 2


# --------------------------------------------------------------------------------------------- signals
# The child runs the real CLI (python -m hat_cli's main) with the model slowed down, and for the
# hard stop with the encoder stalled mid-file, so the signals land at known points.
CHILD = """
import os, sys, time
import hat_cli.api as api
from hat_cli import imageio
from hat_cli.cli import main

def slowed(method):
    def slow(self, *args, **kwargs):
        time.sleep(float(os.environ["SLOW_MODEL"]))
        return method(self, *args, **kwargs)
    return slow
# RGB frames go through upscale_array, grey/alpha through upscale_tensor: slow both.
api.Upscaler.upscale_tensor = slowed(api.Upscaler.upscale_tensor)
api.Upscaler.upscale_array = slowed(api.Upscaler.upscale_array)

if os.environ.get("STALL_WRITE"):
    def stalled_encode(picture, handle, fmt, quality):
        handle.write(b"\\x89PNG first half of an image")
        handle.flush()
        open(os.environ["STALL_WRITE"], "w").close()
        time.sleep(60)
    imageio._encode = stalled_encode

sys.argv = ["hat", *sys.argv[1:]]
main()
"""


def start_child(tmp_path: Path, weights: Path, count: int, **env: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "in").mkdir()
    for index in range(count):
        Image.fromarray(gradient(8, 8 + index)).save(tmp_path / f"in/{index:02d}.png")
    out = tmp_path / "out"
    args = ["upscale", str(tmp_path / "in"), "-o", str(out), "--weights", str(weights), "--json"]
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
    )
    return process, out


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_first_ctrl_c_finishes_the_current_file_then_stops(tmp_path: Path, weights: Path) -> None:
    process, out = start_child(tmp_path, weights, count=8, SLOW_MODEL="0.4")
    try:
        wait_for(lambda: out.exists() and any(p.suffix == ".png" for p in out.iterdir()))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "stopping after the current file" in stderr
    files, summary = json_lines(stdout)
    written = sorted(p for p in out.iterdir())
    assert 1 <= len(written) < 8 and summary["interrupted"] and summary["not_started"] >= 1
    assert summary["done"] == len(written) and summary["failed"] == 0
    assert sorted(Path(o["output"]) for o in files.values()) == written  # each written file was reported
    assert temp_files(tmp_path) == []
    for path in written:  # every output is complete and decodable
        with Image.open(path) as image:
            image.load()
            assert image.size[1] == 16


def test_second_ctrl_c_stops_at_once_and_leaves_no_partial_file(tmp_path: Path, weights: Path) -> None:
    marker = tmp_path / "writing"
    process, out = start_child(tmp_path, weights, count=3, SLOW_MODEL="0", STALL_WRITE=str(marker))
    try:
        wait_for(marker.exists)  # the writer is mid-file, a temp file is on disk
        assert len(temp_files(out)) == 1
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stopped_in < 10  # not after the 60 s stalled write
    assert temp_files(tmp_path) == [] and list(out.iterdir()) == []
