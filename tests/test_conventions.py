"""The conventions upscaler users know (Real-ESRGAN, waifu2x/realesrgan-ncnn-vulkan), the bundled
sample and the quick start, the terminal output, and the thread count on busy CPUs."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli import Upscaler, __version__, threads
from hat_cli.errors import EXIT_CODES, ConfigError
from hat_cli.outscale import OutputSize, resize_array
from hat_cli.samples import sample_path

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _image(folder: Path, name: str = "photo.png", size: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HAT_OFFLINE": "1", **extra}
    env.pop("HAT_REGISTRY", None)
    return env


def _hat(*args: str, stdin: bytes | None = None, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hat_cli", *args],
        input=stdin,
        capture_output=True,
        env=_env(**env),
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _invoke(*args: object):
    return runner.invoke(_app(), [str(a) for a in args])


def _app():
    from hat_cli.cli import app

    return app


@pytest.fixture
def offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HAT_OFFLINE", "1")
    return cache


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- version, help, usage errors


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(flag: str) -> None:
    result = _hat(flag)
    assert result.returncode == 0 and result.stdout.decode().strip() == f"hat {__version__}"


def test_usage_errors_are_one_line_with_exit_2() -> None:
    for args in (
        ["upscale", "--bogus"],
        ["upscale", "x.png", "--quality", "0"],
        ["upscale", "--tile"],
        ["nope"],
        ["lam"],
    ):
        result = _invoke(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert "╭" not in result.stderr and "Usage:" not in result.stderr


def test_help_shows_defaults_one_placeholder_style_and_every_exit_code() -> None:
    result = _invoke("upscale", "-h")
    text = result.stdout
    assert result.exit_code == 0
    assert "hat-cli[ray]" in text and "\\[" not in text
    assert not re.search(r"<(bool|int|str|path|float|list)", text), text
    assert "-t, --tile N|auto" in text and "[default: auto]" in text
    assert "-r, --recursive  " in text  # a flag: no placeholder after it
    flat = " ".join(text.split())  # the table is wrapped under each meaning
    for code, meaning in EXIT_CODES.items():
        assert f" {code} {meaning}" in flat, (code, text)
    for command in (
        "upscale",
        "bench",
        "train",
        "lam",
        "models list",
        "models path",
        "models import",
        "models download",
    ):
        help_text = _invoke(*command.split(), "-h").stdout
        assert not re.search(r"<(bool|int|str|path|float|list|dir|file)", help_text), (command, help_text)
        # One style: upper-case words or a|b choices, never Click's type names or [a|b] brackets.
        assert not re.search(r"--[a-z-]+ (TEXT|INTEGER|FLOAT|BOOLEAN)\b|--[a-z-]+ \[\w+\|", help_text), (
            command,
            help_text,
        )
        assert "\\[" not in help_text  # rich markup escapes are not shown (markup is off)
        assert "{NAME}" not in help_text and "{image}" not in help_text


# --------------------------------------------------------------------------- scale, model names, hints


def test_scale_defaults_to_4_where_the_model_has_x4(tmp_path: Path, offline: Path) -> None:
    source = _image(tmp_path)
    result = _invoke("upscale", source, "-m", "hat-tiny", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["output_size"] == [64, 48] and record["output"].endswith("photo_x4.png")
    bicubic = _invoke("upscale", source, "-m", "bicubic", "-o", tmp_path / "b.png")
    assert bicubic.exit_code == 0 and Image.open(tmp_path / "b.png").size == (64, 48)


def test_bad_scale_lists_the_valid_ones(tmp_path: Path, offline: Path) -> None:
    result = _invoke("upscale", _image(tmp_path), "-m", "hat-tiny", "-s", "3")
    assert result.exit_code == 2 and "x2, x4" in result.stderr


def test_bicubic_is_listed_among_the_models(tmp_path: Path, offline: Path) -> None:
    result = _invoke("upscale", _image(tmp_path), "-m", "hat-xxl")
    assert result.exit_code == 2 and "bicubic" in result.stderr and "hat-tiny" in result.stderr


def test_offline_error_suggests_the_bundled_model(tmp_path: Path, offline: Path) -> None:
    result = _invoke("upscale", _image(tmp_path), "-m", "hat-s")
    assert result.exit_code == 2 and "--model hat-tiny" in result.stderr and "not cached" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- sizes


def test_outscale_is_the_network_then_a_bicubic_resize(tmp_path: Path, offline: Path) -> None:
    source = _image(tmp_path, size=(16, 12))
    network = Upscaler.from_preset("hat-tiny", scale=4, offline=True, device="cpu").upscale_array(
        np.asarray(Image.open(source))
    )
    for outscale, size, name in (("3.5", (56, 42), "photo_x3.5.png"), ("8", (128, 96), "photo_x8.png")):
        result = _invoke("upscale", source, "-m", "hat-tiny", "--outscale", outscale, "--device", "cpu")
        assert result.exit_code == 0, result.output
        out = np.asarray(Image.open(tmp_path / name))
        assert out.shape[:2] == size[::-1]
        np.testing.assert_array_equal(out, resize_array(network, size[1], size[0], "bicubic"))
    bad = _invoke("upscale", source, "--outscale", "0")
    assert bad.exit_code == 2 and "must be a number > 0" in bad.stderr


def test_width_and_height_keep_the_aspect_or_set_both(tmp_path: Path, offline: Path) -> None:
    source = _image(tmp_path, size=(16, 12))
    for args, size in (
        (["--width", "40"], (40, 30)),
        (["--height", "15"], (20, 15)),
        (["--width", "7", "--height", "9"], (7, 9)),
    ):
        out = tmp_path / f"out_{'_'.join(args)}.png"
        result = _invoke("upscale", source, "-m", "hat-tiny", *args, "-o", out)
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == size
    both = _invoke("upscale", source, "--outscale", "2", "--width", "40")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert OutputSize(height=10).target(12, 16) == (10, 13)
    with pytest.raises(ConfigError):
        OutputSize(width=0)


def test_outscale_keeps_grey_alpha_and_16_bit(tmp_path: Path, offline: Path) -> None:
    rng = np.random.default_rng(1)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8), "RGBA").save(rgba)
    result = _invoke("upscale", rgba, "-m", "hat-tiny", "--outscale", "2.5", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "o.png") as image:
        assert image.mode == "RGBA" and image.size == (40, 30)
    grey16 = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    assert resize_array(grey16, 30, 40).dtype == np.uint16


# --------------------------------------------------------------------------- short options, devices


def test_short_tile_option_and_gpu_index(tmp_path: Path, offline: Path) -> None:
    source = _image(tmp_path, size=(40, 40))
    tiled = _invoke("upscale", source, "-m", "hat-tiny", "-t", "16", "-v", "-g", "-1", "-o", tmp_path / "t.png")
    assert tiled.exit_code == 0, tiled.output
    assert "tiles of 16 px" in tiled.stderr and "on cpu" in tiled.stderr
    both = _invoke("upscale", source, "-m", "hat-tiny", "-g", "0", "--device", "cpu")
    assert both.exit_code == 2 and "not both" in both.stderr
    if not torch.cuda.is_available():
        gpu = _invoke("upscale", source, "-m", "hat-tiny", "-g", "0")
        assert gpu.exit_code == 2 and "CUDA" in gpu.stderr


# --------------------------------------------------------------------------- stdin / stdout


@pytest.mark.parametrize(
    ("fmt", "args", "magic"),
    [("PNG", [], b"\x89PNG"), ("JPEG", [], b"\xff\xd8"), ("JPEG", ["--format", "png"], b"\x89PNG")],
)
def test_dash_reads_stdin_and_writes_stdout(tmp_path: Path, fmt: str, args: list[str], magic: bytes) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buffer, fmt)
    result = _hat("upscale", "-", "-o", "-", "-m", "hat-tiny", *args, stdin=buffer.getvalue(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(magic)  # nothing but the image on stdout
    assert Image.open(io.BytesIO(result.stdout)).size == (64, 48)
    assert "<stdin> -> <stdout>" in result.stderr.decode()
    assert list(tmp_path.iterdir()) == []  # no file left anywhere visible


def test_stdin_errors_are_one_line(tmp_path: Path) -> None:
    empty = _hat("upscale", "-", "-o", "-", "-m", "hat-tiny", stdin=b"")
    assert empty.returncode == 2 and "stdin is empty" in empty.stderr.decode() and empty.stdout == b""
    junk = _hat("upscale", "-", "-o", "-", "-m", "hat-tiny", stdin=b"not an image")
    assert junk.returncode == 1 and "<stdin>" in junk.stderr.decode() and junk.stdout == b""
    several = _hat("upscale", str(_image(tmp_path)), str(_image(tmp_path, "b.png")), "-o", "-")
    assert several.returncode == 2 and "exactly one input" in several.stderr.decode()


# --------------------------------------------------------------------------- folders and -o


def test_folder_with_subfolders_without_r_says_how_many_it_skipped(tmp_path: Path, offline: Path) -> None:
    _image(tmp_path / "in")
    _image(tmp_path / "in" / "a")
    _image(tmp_path / "in" / "b")
    result = _invoke("upscale", tmp_path / "in", "-m", "bicubic", "--dry-run")
    assert result.exit_code == 0
    assert "skipped 2 subfolders" in result.stderr and "-r" in result.stderr
    as_json = _invoke("upscale", tmp_path / "in", "-m", "bicubic", "--dry-run", "--json")
    assert json.loads(as_json.stdout.splitlines()[-1])["subfolders_skipped"] == 2


def test_o_with_an_image_name_and_several_inputs_is_an_error(tmp_path: Path) -> None:
    a, b = _image(tmp_path, "a.png"), _image(tmp_path, "b.png")
    for inputs in ([a, b], [tmp_path]):
        result = _invoke("upscale", *inputs, "-m", "bicubic", "-o", tmp_path / "big.png")
        assert result.exit_code == 2 and "several inputs need a folder" in result.stderr
        assert not (tmp_path / "big.png").exists()


# --------------------------------------------------------------------------- --json


def test_json_config_error_still_ends_with_the_summary(tmp_path: Path, offline: Path) -> None:
    result = _invoke("upscale", _image(tmp_path), "-m", "nosuch", "--json")
    assert result.exit_code == 2
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["exit_code"] == 2 and "nosuch" in summary["error"]
    bad_size = _invoke("upscale", _image(tmp_path), "--outscale", "-2", "--json")
    assert json.loads(bad_size.stdout.splitlines()[-1])["exit_code"] == 2
    bad_option = _invoke("upscale", _image(tmp_path), "--json", "--quality", "0")
    summary = json.loads(bad_option.stdout.splitlines()[-1])
    assert bad_option.exit_code == 2 and summary["exit_code"] == 2 and "--quality" in summary["error"]


def test_json_file_records_carry_input_and_output_sizes(tmp_path: Path, offline: Path) -> None:
    result = _invoke("upscale", _image(tmp_path, size=(16, 12)), "-m", "hat-tiny", "-s", "2", "--json")
    record = json.loads(result.stdout.splitlines()[0])
    assert record["input_size"] == [16, 12] and record["output_size"] == [32, 24]


# --------------------------------------------------------------------------- the sample and the quick start


def test_sample_ships_with_its_licence_and_upscales_offline(tmp_path: Path, offline: Path, monkeypatch) -> None:
    path = sample_path()
    assert path.is_file() and path.stat().st_size < 100_000
    assert (
        "Kodak" in (path.parent / "README.md").read_text() and "unrestricted" in (path.parent / "README.md").read_text()
    )
    assert '"samples/*.png"' in (ROOT / "pyproject.toml").read_text()
    before = sorted(path.parent.iterdir())
    result = _invoke("upscale", "--sample", "-m", "hat-tiny", "-o", tmp_path / "parrots_x4.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "parrots_x4.png").size == (640, 640)
    assert str(tmp_path / "parrots_x4.png") in result.stdout  # says where the result went
    monkeypatch.chdir(tmp_path)
    here = _invoke("upscale", "--sample", "-m", "hat-tiny", "-s", "2")  # no -o: the current folder
    assert here.exit_code == 0 and (tmp_path / "parrots_x2.png").is_file()
    assert sorted(path.parent.iterdir()) == before  # nothing written into the package


# --------------------------------------------------------------------------- the terminal


def test_batch_lines_print_above_one_live_bar(tmp_path: Path) -> None:
    """In a 120x30 terminal, each file line is printed through the live display (after it erased
    the bar), never glued to the end of a bar."""
    for i in range(3):
        _image(tmp_path / "in", f"img{i}.png", size=(64, 48), seed=i)
    main, child = pty.openpty()
    env = _env(COLUMNS="120", LINES="30", TERM="xterm-256color")
    args = [
        "upscale",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "-m",
        "hat-tiny",
        "-t",
        "16",
        "--threads",
        "1",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "hat_cli", *args], stdout=child, stderr=child, stdin=subprocess.DEVNULL, env=env
    )
    os.close(child)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    os.close(main)
    screen = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode("utf-8", "replace"))  # colours out
    assert process.returncode == 0, screen
    lines = list(re.finditer(re.escape(str(tmp_path / "in")) + r"/img\d\.png -> ", screen))
    assert len(lines) == 3, screen
    assert "━" in screen  # the bar was drawn
    for match in lines:
        before = screen[: match.start()]
        assert before.endswith(("\x1b[2K", "\n")), repr(before[-40:])


# --------------------------------------------------------------------------- threads


def test_threads_option_sets_torch_threads(tmp_path: Path, offline: Path, keep_threads) -> None:
    torch.set_num_threads(2)
    result = _invoke("upscale", _image(tmp_path), "-m", "hat-tiny", "--threads", "1", "-v")
    assert result.exit_code == 0 and "CPU threads: 1 (--threads)" in result.stderr
    assert torch.get_num_threads() == 1
    assert _invoke("upscale", _image(tmp_path), "--threads", "0").exit_code == 2


@pytest.mark.parametrize("command", ["upscale", "bench", "lam", "train"])
def test_every_command_running_a_network_takes_threads(command: str) -> None:
    result = _invoke(command, "--help")
    assert result.exit_code == 0 and "--threads N" in result.stdout


def test_lam_threads_sets_torch_threads(tmp_path: Path, offline: Path, keep_threads) -> None:
    torch.set_num_threads(2)
    image = _image(tmp_path, size=(12, 12))
    result = _invoke(
        "lam", image, "-m", "hat-tiny", "-s", "4", "--at", "8,8", "--steps", "2", "--threads", "1", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1


def test_available_cpus_reads_affinity_and_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert threads.available_cpus(v2) == 2  # 1.5 CPUs of quota, rounded up
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.available_cpus(v2) == 4
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.available_cpus(v1) == 1
    assert threads.available_cpus(tmp_path / "none") == 4


def test_default_threads_are_the_available_cores(monkeypatch: pytest.MonkeyPatch, keep_threads) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda: 3)
    assert threads.default_threads() == 3
    assert threads.set_threads() == 3 and torch.get_num_threads() == 3
    with pytest.raises(ConfigError):
        threads.set_threads(0)
    with pytest.raises(ConfigError, match="must be from 1 to"):
        threads.set_threads(threads.max_threads() + 1)  # 100000 crashed OpenMP (exit 139)


def test_openmp_waits_passively_unless_the_user_chose() -> None:
    code = "import os, hat_cli.threads as t; t.prepare_openmp(); print(os.environ['OMP_WAIT_POLICY'])"
    env = _env()
    env.pop("OMP_WAIT_POLICY", None)
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == "PASSIVE"
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert chosen.stdout.strip() == "ACTIVE"
