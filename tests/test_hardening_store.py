"""Hardening (issue 13), downloads and registries: every download is bounded (D3), a failed
download has its own exit code (4), and hostile or sloppy registry files are one line, exit 2
(D12, D13, D1's lost table names). Real HTTP server (tests/store_server.py), real files."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hat_cli.cli import app
from hat_cli.errors import EXIT_NETWORK, EXIT_SOME_FAILED, EXIT_USAGE, ConfigError
from hat_cli.registry import MAX_NAME_LENGTH, MAX_REGISTRY_BYTES, load_registry
from hat_cli.store import download as store_download
from hat_cli.store.paths import write_error
from tests._hardening import child_env
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
    "unclosed-ipv6-url": (_with("urls", '["http://[::1/x"]'), "is not a valid URL"),
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
    # Issue 13, second pass: accepted before, or exit 3
    "bundled=true": (_with("bundled", "true"), "bundled = true is for the built-in registry only"),
    "schema=true": ("schema = true\n" + MODEL, "schema must be an integer, not True"),
    "file-300-chars": (_with("file", '"' + "a" * 300 + '.pth"'), f"longer than {MAX_NAME_LENGTH} characters"),
    "name-300-chars": (MODEL.replace('"x"', '"' + "x" * 300 + '"'), f"longer than {MAX_NAME_LENGTH} characters"),
    "int-5000-digits": ("n = " + "9" * 5000 + "\n" + MODEL, "not valid TOML"),
    "mlp_ratio=1e308": (_with("mlp_ratio", "1e308"), "a value is too large"),
    "overlap_ratio=1e308": (_with("overlap_ratio", "1e308"), "a value is too large"),
    "url-empty-label": (_with("urls", '["https://a..b/x.pth"]'), "cannot be looked up"),
    "url-label-300": (_with("urls", '["https://' + "a" * 300 + '.org/x.pth"]'), "cannot be looked up"),
    "url-port-99999": (_with("urls", '["http://127.0.0.1:99999/x.pth"]'), "is not a valid URL"),
    "url-port-abc": (_with("urls", '["http://127.0.0.1:abc/x.pth"]'), "is not a valid URL"),
    "url-space": (_with("urls", '["https://example.org/a b.pth"]'), "space or control character"),
    "url-non-ascii-path": (_with("urls", '["https://example.org/\u00e9.pth"]'), "non-ASCII"),
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
    file_level = ("binary", "nested-arrays", "models=5", "families=5", "schema=2", "families.f=5", "Evil+evil")
    if name not in (*file_level, "schema=true", "int-5000-digits", "name-300-chars"):
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


# ------------------------------------------------- issue 13, second pass: registry and cache paths
def _child(*args: str | Path, timeout: float = 60, memory: int | None = None, **env: str):
    """``hat ARGS`` in a child process (a hang or a runaway read cannot take the test run with it)."""

    def limit() -> None:  # in the child, before it runs hat
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "hat_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
        preexec_fn=None if memory is None else limit,
    )


def _one_child_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_registry_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    """It used to be read whole: MemoryError (exit 3) under a 3 GiB limit, unbounded without."""
    done = _child("models", "list", "--registry", "/dev/zero", memory=3 << 30, HAT_CACHE_DIR=str(tmp_path / "c"))
    line = _one_child_error(done, EXIT_USAGE)
    assert "/dev/zero is not a regular file" in line and "HAT_REGISTRY" in line


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_registry_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "r.toml"
    os.mkfifo(fifo)
    done = _child("models", "list", "--registry", fifo, timeout=60, HAT_CACHE_DIR=str(tmp_path / "c"))
    assert f"{fifo} is not a regular file" in _one_child_error(done, EXIT_USAGE)


def test_registry_folder_and_oversized_file_are_one_line(tmp_path: Path, cache: Path) -> None:
    assert f"{tmp_path} is not a regular file" in one_error(hat("models", "list", "--registry", tmp_path), EXIT_USAGE)
    big = tmp_path / "big.toml"
    big.write_text(MODEL + ("# padding\n" * (MAX_REGISTRY_BYTES // 10 + 1)))  # valid TOML, just too long
    line = one_error(hat("models", "list", "--registry", big), EXIT_USAGE)
    assert f"registry {big} is too large" in line and "1 MiB" in line
    big.write_text(MODEL + "#" * (MAX_REGISTRY_BYTES - len(MODEL) - 1) + "\n")  # exactly the limit: read
    assert hat("models", "list", "--registry", big).exit_code == 0


def test_a_user_registry_cannot_point_into_the_package(tmp_path: Path, cache: Path) -> None:
    """bundled = true used to make 'hat models path' print (and upscale load) a package file."""
    registry = write_registry(
        tmp_path / "r.toml",
        {"Evil": {"family": "hat-tiny", "scale": 4, "file": "hat-tiny-x4.safetensors", "bundled": True}},
    )
    result = hat("models", "path", "Evil", "--registry", registry)
    line = one_error(result, EXIT_USAGE)
    assert f"{registry}: [models.'Evil']: bundled = true is for the built-in registry only" in line
    assert result.stdout == ""
    registry.write_text(registry.read_text().replace("bundled = true", "bundled = false"))
    assert "is not cached" in one_error(hat("models", "path", "Evil", "--registry", registry), EXIT_USAGE)


def test_the_longest_file_name_allowed_still_fits_the_cache(tmp_path: Path, cache: Path, server) -> None:
    """At the limit, every name the cache derives from ``file`` (<file>.<12 hex>, its .part and
    .lock, the temporaries of an import) fits the 255-byte limit: download, remove, import."""
    data = b"w" * 100
    source = tmp_path / "w.pth"
    source.write_bytes(data)
    file = "f" * (MAX_NAME_LENGTH - 4) + ".pth"
    table = {"family": "hat-tiny", "scale": 4, "file": file, "sha256": sha256(data), "urls": [server.serve("/w", data)]}
    registry = write_registry(tmp_path / "r.toml", {"w": table})
    cached = [f"checkpoints/{file[:-4]}.{sha256(data)[:12]}.pth"]
    result = hat("models", "download", "w", "--registry", registry)
    assert result.exit_code == 0, result.output
    assert cache_files(cache) == cached
    assert hat("models", "rm", "w", "--registry", registry).exit_code == 0
    result = hat("models", "import", source, "--name", "w", "--registry", registry)
    assert result.exit_code == 0, result.output
    assert cache_files(cache) == cached
    too_long = write_registry(tmp_path / "r2.toml", {"w": {**table, "file": "f" + file}})
    line = one_error(hat("models", "import", source, "--name", "w", "--registry", too_long), EXIT_USAGE)
    assert f"longer than {MAX_NAME_LENGTH} characters" in line


def test_import_of_a_name_too_long_or_not_a_file_is_one_line(tmp_path: Path, cache: Path) -> None:
    """Path.is_file() raises OSError (ENAMETOOLONG) on Python 3.11: it used to be exit 3."""
    long_name = tmp_path / ("a" * 300 + ".pth")
    line = one_error(hat("models", "import", long_name), EXIT_USAGE)
    assert line.startswith(f"error: cannot read {long_name}") and "too long" in line
    assert f"{tmp_path} is not a regular file" in one_error(hat("models", "import", tmp_path), EXIT_USAGE)


@pytest.mark.parametrize(
    "folder",
    ["~no-such-user-hat-test/cache", "/tmp/" + "a" * 300, "/tmp/" + "a/" * 2100],
    ids=["unknown-user", "name-over-255", "path-over-4096"],
)
def test_a_hostile_cache_folder_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    monkeypatch.setenv("HAT_CACHE_DIR", folder)
    monkeypatch.delenv("HAT_REGISTRY", raising=False)
    for args in (("list",), ("verify", "hat-s", "--scale", "4"), ("rm", "hat-s", "--scale", "4")):
        line = one_error(hat("models", *args), EXIT_USAGE)
        assert "HAT_CACHE_DIR" in line, line


def test_write_errors_of_the_cache_path_itself_are_usage_errors(tmp_path: Path) -> None:
    for code in (errno.ENAMETOOLONG, errno.ELOOP):
        error = write_error(OSError(code, os.strerror(code)), tmp_path / "x")
        assert isinstance(error, ConfigError) and "HAT_CACHE_DIR" in str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="no FIFOs")
def test_a_fifo_as_recorded_sha256_does_not_hang(tmp_path: Path) -> None:
    """The sha256 recorded for a hand-imported file (HAN/RCAN) used to be read unbounded and blocking."""
    checkpoints = tmp_path / "c" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.mkfifo(checkpoints / "HAN_BIX2.sha256")
    (checkpoints / "HAN_BIX3.sha256").symlink_to("/dev/zero")
    done = _child(
        "models", "list", "--json", timeout=60, memory=3 << 30, HAT_CACHE_DIR=str(tmp_path / "c"), HAT_REGISTRY=""
    )
    assert done.returncode == 0, done.stderr


def test_docs_state_the_registry_limits() -> None:
    text = " ".join((ROOT / "docs" / "registry.md").read_text().split())
    assert f"of at most {MAX_REGISTRY_BYTES >> 20} MiB" in text
    assert f"at most {MAX_NAME_LENGTH} characters long" in text
    assert "`bundled = true` is for the built-in registry only" in text and "your file is refused" in text
