"""Hardening (issue 13), downloads and registries: every download is bounded (D3), a failed
download has its own exit code (4), and hostile or sloppy registry files are one line, exit 2
(D12, D13, D1's lost table names). Real HTTP server (tests/store_server.py), real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hat_cli.cli import app
from hat_cli.errors import EXIT_NETWORK, EXIT_SOME_FAILED, EXIT_USAGE
from hat_cli.registry import load_registry
from hat_cli.store import download as store_download
from tests.store_server import cache_files, sha256, write_registry

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def hat(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, code: int) -> str:
    """The exit code, and exactly one ``error:`` line on stderr (no traceback, nothing else)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def tiny_table(url: str, data: bytes | None = None, size: int | None = None) -> dict:
    table = {"family": "hat-tiny", "scale": 4, "file": "t.pth", "sha256": sha256(data) if data else SHA, "urls": [url]}
    if size is not None:
        table["size"] = size
    return table


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """The ceiling without its 64 MiB slack, so a runaway stream hits it within a few MB."""
    monkeypatch.setattr(store_download, "CAP_SLACK", 0)
    return int(store_download.CAP_PARAM_COPIES * 4 * load_registry().presets["hat-tiny-x4"].config.num_params)


# ------------------------------------------------------------------------------------------ D3
@pytest.mark.parametrize("chunked", [False, True], ids=["no-content-length", "chunked"])
def test_d3_unsized_preset_endless_stream_stops_at_the_ceiling_and_the_part_goes(
    tmp_path: Path, cache: Path, server, small_cap: int, chunked: bool
) -> None:
    url = server.serve("/t.pth", b"x" * 1000, length=False, chunked=chunked, endless=True)
    registry = write_registry(tmp_path / "r.toml", {"t": tiny_table(url)})
    line = one_error(hat("models", "download", "t", "--registry", registry), EXIT_NETWORK)
    assert "ceiling" in line and f"{small_cap:,}" in line
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == []  # no .part kept
    assert server.files["/t.pth"].sent < small_cap + (8 << 20)  # stopped at the cap, not at the guard


def test_d3_sized_preset_over_long_stream_stops_at_its_size(tmp_path: Path, cache: Path, server) -> None:
    data = b"y" * 5000
    url = server.serve("/t.pth", data, length=False, endless=True)
    registry = write_registry(tmp_path / "r.toml", {"t": tiny_table(url, data, size=len(data))})
    line = one_error(hat("models", "download", "t", "--registry", registry), EXIT_NETWORK)
    assert "more than the expected 5,000 bytes" in line
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == []
    assert server.files["/t.pth"].sent < 64 << 20


def test_d3_content_length_over_the_ceiling_is_refused_before_the_body(
    tmp_path: Path, cache: Path, server, small_cap: int
) -> None:
    url = server.serve("/t.pth", bytes(small_cap + 1))
    registry = write_registry(tmp_path / "r.toml", {"t": tiny_table(url)})
    line = one_error(hat("models", "download", "t", "--registry", registry), EXIT_NETWORK)
    assert f"serves {small_cap + 1:,} bytes, more than the {small_cap:,}-byte ceiling" in line
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == []


@pytest.mark.parametrize("chunked", [False, True], ids=["no-content-length", "chunked"])
def test_d3_a_mirror_without_length_still_delivers_a_good_file(
    tmp_path: Path, cache: Path, server, chunked: bool
) -> None:
    data = b"z" * 70_000
    url = server.serve("/t.pth", data, length=False, chunked=chunked)
    registry = write_registry(tmp_path / "r.toml", {"t": tiny_table(url, data)})
    result = hat("models", "download", "t", "--registry", registry)
    assert result.exit_code == 0, result.output
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == [f"checkpoints/t.{sha256(data)[:12]}.pth"]


def test_d3_every_builtin_preset_has_a_bounded_download() -> None:
    """A registry size where one is established (shared/reference/official-checkpoints.md), else
    the documented ceiling: 2.5 x float32 parameter bytes + 64 MiB, above every known file."""
    known = {
        "HAT-S_SRx2": 79906461,
        "HAT-S_SRx4": 81089561,
        "HAT_SRx4_ImageNet-pretrain": 85137601,
        "HAT-L_SRx4_ImageNet-pretrain": 165774123,
        "Real_HAT_GAN_SRx4": 170277017,
        "Real_HAT_GAN_SRx4_sharper": 170277017,
    }
    for preset in load_registry():
        cap = store_download.download_cap(preset)
        if preset.name in known:
            assert preset.size == known[preset.name] == cap
        elif not preset.bundled:
            assert preset.size is None
            assert cap == int(2.5 * 4 * preset.config.num_params) + (64 << 20)
            family_files = [size for name, size in known.items() if name.split("_SR")[0] == preset.name.split("_SR")[0]]
            assert all(size < cap for size in family_files), preset.name  # a real file of its family fits
            assert cap < 600 << 20


# -------------------------------------------------------------------------------- exit code 4
def test_download_failures_exit_4_not_the_usage_code(tmp_path: Path, cache: Path, server) -> None:
    data = b"q" * 1000
    registry = write_registry(
        tmp_path / "r.toml",
        {
            "gone": {**tiny_table(server.url("/gone.pth")), "file": "gone.pth"},
            "bad": {**tiny_table(server.serve("/bad.pth", b"w" * 1000), data), "file": "bad.pth"},
            "good": {**tiny_table(server.serve("/good.pth", data), data), "file": "good.pth"},
        },
    )
    line = one_error(hat("models", "download", "gone", "--registry", registry), EXIT_NETWORK)
    assert "could not download gone" in line and "HTTP 404" in line
    assert "sha256 mismatch" in one_error(hat("models", "download", "bad", "--registry", registry), EXIT_NETWORK)
    image = tmp_path / "a.png"
    image.write_bytes(b"")  # never read: the model fails first
    result = hat("upscale", image, "--model", "gone", "--registry", registry)
    line = one_error(result, EXIT_NETWORK)
    assert "could not download gone" in line and line.endswith(
        "or use the bundled --model hat-tiny, which needs no download"
    )
    # Several models: the batch rule, some failed -> 1, the good one is downloaded.
    result = hat("models", "download", "gone", "good", "--registry", registry)
    assert result.exit_code == EXIT_SOME_FAILED and "downloaded good" in result.stdout


# ------------------------------------------------------------------------------- D12 and D13
MODEL = '[models."x"]\nfamily = "hat-tiny"\nscale = 4\nfile = "x.pth"\nsha256 = "' + SHA + '"\n'
FAMILY = (
    "[families.f]\nembed_dim = 12\ndepths = [1]\nnum_heads = [2]\nwindow_size = 4\ncompress_ratio = 3\n"
    "squeeze_factor = 4\n"
)
TABLE = "[models.'x']"


def _with(key: str, value: str) -> str:
    """MODEL with ``key = value`` set (replacing the key if MODEL has it)."""
    lines = [line for line in MODEL.splitlines() if not line.startswith(f"{key} =")]
    return "\n".join([*lines, f"{key} = {value}"]) + "\n"


REGISTRIES = {
    # D12: wrong types used to reach code that assumed the right ones (exit 3)
    "urls=5": (_with("urls", "5"), "urls must be a list"),
    "urls=[1,2]": (_with("urls", "[1, 2]"), "urls must be a list of strings"),
    "aliases=5": (_with("aliases", "5"), "aliases must be a list"),
    "family=[1]": (_with("family", "[1]"), "family must be a string"),
    "models=5": ("models = 5\n", "models must be a table"),
    "families=5": ("families = 5\n" + MODEL, "families must be a table"),
    "families.f=5": ("[families]\nf = 5\n" + MODEL, "[families.'f'] must be a table"),
    "num_heads=[0]": (FAMILY.replace("num_heads = [2]", "num_heads = [0]") + _with("family", '"f"'), "num_heads"),
    "squeeze_factor=0": (_with("squeeze_factor", "0"), "squeeze_factor must be a positive integer"),
    "window_size=4.5": (_with("window_size", "4.5"), "window_size must be a positive integer"),
    "embed_dim=true": (_with("embed_dim", "true"), "embed_dim must be a positive integer"),
    "depths=string": (_with("depths", '"66"'), "depths"),
    "arch=5": (FAMILY + "arch = 5\n" + _with("family", '"f"'), "arch must be a string"),
    "unclosed-ipv6-url": (_with("urls", '["http://[::1/x"]'), "is not https"),
    "ftp-url": (_with("urls", '["ftp://example.org/x.pth"]'), "is not https"),
    "binary": (bytes(range(256)) * 4, "not a TOML registry (not UTF-8 text)"),
    "nested-arrays": ("x = " + "[" * 20000 + "]" * 20000 + "\n", "not valid TOML"),
    "array-of-tables": ('[[models.x]]\nfamily = "hat-tiny"\n', "must be a table"),
    # D13: silently accepted before
    "aliases=abc": (_with("aliases", '"abc"'), "aliases must be a list"),
    "scale=4.7": (_with("scale", "4.7"), "scale must be an integer"),
    "scale=true": (_with("scale", "true"), "scale must be an integer"),
    "Evil+evil": (MODEL + MODEL.replace('"x"', '"X"'), "differ only in case"),
    "name-newline": (MODEL.replace('[models."x"]', '[models."x\\n"]'), "may use only letters"),
    "file-newline": (_with("file", '"x.pth\\n"'), "must be a plain file name"),
    "sha-newline": (_with("sha256", f'"{SHA}\\n"'), "sha256 must be 64 hex digits"),
    "size=-1": (_with("size", "-1"), "size must be a positive integer"),
    "size=1.5": (_with("size", "1.5"), "size must be an integer"),
    "bundled=yes": (_with("bundled", '"yes"'), "bundled must be true or false"),
    "schema=2": ("schema = 2\n" + MODEL, "schema 2 is not supported"),
    # D1: the table name used to vanish as rich markup
    "family=nope": (_with("family", '"nope"'), "family 'nope' is not defined under [families]"),
}


@pytest.mark.parametrize("name", list(REGISTRIES))
def test_d12_d13_registry_mistakes_are_one_line_naming_file_and_table(tmp_path: Path, name: str) -> None:
    text, expected = REGISTRIES[name]
    path = tmp_path / "r.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_error(hat("models", "list", "--registry", path), EXIT_USAGE)
    assert str(path) in line and expected in line, line
    if name not in ("binary", "nested-arrays", "models=5", "families=5", "schema=2", "families.f=5", "Evil+evil"):
        assert TABLE in line or "[models.'X']" in line or "model name" in line, line


def test_d13_valid_neighbours_still_load(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        FAMILY + _with("family", '"f"').replace("[models", 'aliases = ["a-b"]\n[models', 0) + 'aliases = ["mine"]\n'
    )
    registry = load_registry(path)
    assert registry.presets["x"].aliases == ("mine",) and registry.presets["x"].scale == 4
    assert registry.resolve("MINE").name == "x"


def test_d3_docs_state_the_ceiling() -> None:
    text = (ROOT / "docs" / "registry.md").read_text()
    assert re.search(r"2\.5 ×|2\.5 x", text) and "64 MiB" in text
