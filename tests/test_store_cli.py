"""``hat models download/path/verify/import/rm`` and ``hat upscale`` downloading, via CliRunner."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hat_cli.api import Upscaler
from hat_cli.atomic import TEMP_SUFFIX
from hat_cli.cli import app
from tests.conftest import TINY_CONFIG
from tests.store_server import cache_files, sha256, write_registry

DATA2 = os.urandom(70_000)
DATA3 = os.urandom(50_000)
runner = CliRunner()


@pytest.fixture
def registry(tmp_path, server) -> Path:
    """``rnd-x2``/``rnd-x3`` (alias ``rnd``) served by the local server; ``gone-x2`` 404s."""

    def table(scale: int, data: bytes, url: str) -> dict:
        return {
            "family": "hat-s",
            "scale": scale,
            "file": f"rnd_x{scale}.pth",
            "sha256": sha256(data),
            "size": len(data),
            "aliases": ["rnd"],
            "urls": [url],
        }

    models = {
        "rnd-x2": table(2, DATA2, server.serve("/rnd_x2.pth", DATA2)),
        "rnd-x3": table(3, DATA3, server.serve("/rnd_x3.pth", DATA3)),
        "gone-x2": {**table(2, b"gone", server.url("/gone.pth")), "aliases": [], "file": "gone.pth"},
    }
    return write_registry(tmp_path / "reg.toml", models)


def hat(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The CLI's one ``error:`` line on stderr, checking the usage/config exit code 2."""
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def test_download_path_verify_rm_cycle(cache, server, registry, monkeypatch):
    result = hat("models", "download", "rnd-x2", "--registry", registry)
    assert result.exit_code == 0, result.output
    path = cache / "checkpoints" / f"rnd_x2.{sha256(DATA2)[:12]}.pth"
    assert result.stdout == f"downloaded rnd-x2: {path}\n"
    assert path.read_bytes() == DATA2

    monkeypatch.setenv("HAT_REGISTRY", str(registry))  # the environment variable works like --registry
    assert hat("models", "download", "rnd", "--scale", "2").stdout == f"cached rnd-x2: {path}\n"
    assert server.hits("/rnd_x2.pth") == [None]
    assert hat("models", "path", "rnd", "--scale", "2").stdout == f"{path}\n"

    result = hat("models", "verify", "rnd-x2")
    assert result.exit_code == 0 and result.stdout.split() == ["ok", "rnd-x2:", str(path)]

    path.write_bytes(b"x" + DATA2[1:])  # bit rot
    result = hat("models", "verify")
    assert result.exit_code == 1
    assert f"mismatch rnd-x2: {path} (sha256 {sha256(b'x' + DATA2[1:])}, expected {sha256(DATA2)}" in result.stdout
    assert "missing  rnd-x3:" in result.stdout

    result = hat("models", "rm", "rnd-x2")
    assert result.exit_code == 0 and result.stdout == f"removed rnd-x2: {path}\n"
    assert cache_files(cache) == []
    assert hat("models", "rm", "rnd-x2").stdout == "rnd-x2 is not cached\n"

    result = hat("models", "path", "rnd-x2")
    assert f"model rnd-x2 is not cached: expected {path}" in error_line(result)
    assert hat("models", "verify", "rnd-x2").exit_code == 1  # named and missing
    assert hat("models", "verify", "-q").exit_code == 0  # nothing cached is not an error


def test_download_alias_needs_scale_and_json_output(cache, server, registry):
    result = hat("models", "download", "rnd", "--registry", registry)
    assert "exists at scales x2, x3: add --scale N" in error_line(result)
    result = hat("models", "download", "rnd", "--scale", "3", "--registry", registry, "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["name"] == "rnd-x3" and row["status"] == "downloaded" and row["url"].endswith("/rnd_x3.pth")
    assert Path(row["path"]).read_bytes() == DATA3
    assert hat("models", "download", "--registry", registry).exit_code != 0  # neither names nor --all


def test_download_several_reports_each_failure_and_exits_1(cache, server, registry):
    result = hat("models", "download", "gone-x2", "rnd-x2", "--registry", registry, "--json")
    assert result.exit_code == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["rnd-x2"]["status"] == "downloaded"
    assert rows["gone-x2"]["status"] == "failed" and "HTTP 404" in rows["gone-x2"]["error"]


def test_offline_download_makes_no_request(cache, server, registry, monkeypatch):
    monkeypatch.setenv("HAT_OFFLINE", "1")
    result = hat("models", "download", "rnd-x2", "--registry", registry)
    message = error_line(result)
    assert "offline" in message and "rnd_x2.pth" in message and sha256(DATA2) in message
    assert "hat models import FILE --name rnd-x2" in message
    result = hat("models", "download", "--all", "--registry", registry)  # every preset, builtin ones too
    assert result.exit_code == 1 and "HAT_SRx4" in result.output
    assert server.requests == []


def test_import_by_name_by_hash_and_refusals(cache, server, registry, tmp_path):
    fetched = tmp_path / "from_drive.pth"
    fetched.write_bytes(DATA2)
    result = hat("models", "import", fetched, "--name", "rnd", "--scale", "2", "--registry", registry)
    assert result.exit_code == 0, result.output
    target = cache / "checkpoints" / f"rnd_x2.{sha256(DATA2)[:12]}.pth"
    assert result.stdout == f"imported rnd-x2: {target}\n" and target.read_bytes() == DATA2

    fetched.write_bytes(DATA3)  # no --name: found by its sha256
    result = hat("models", "import", fetched, "--registry", registry, "--json")
    assert json.loads(result.stdout)[0]["name"] == "rnd-x3"

    fetched.write_bytes(DATA3)
    result = hat("models", "import", fetched, "--name", "rnd-x2", "--registry", registry)
    message = error_line(result)
    assert f"is not rnd-x2: sha256 {sha256(DATA3)} (50000 bytes), expected {sha256(DATA2)}" in message

    result = hat("models", "import", tmp_path / "nope.pth", "--registry", registry)
    assert f"{tmp_path / 'nope.pth'}: no such file" in error_line(result)

    fetched.write_bytes(b"something else")
    result = hat("models", "import", fetched, "--registry", registry)
    assert f"(sha256 {sha256(b'something else')}) matches no model" in error_line(result)
    assert sorted(p.name for p in (cache / "checkpoints").iterdir()) == sorted(
        [target.name, f"rnd_x3.{sha256(DATA3)[:12]}.pth"]
    )  # refused imports leave no temporary file
    assert server.requests == []


# ---------------------------------------------------------------------------------------- end to end
@pytest.fixture
def tiny_registry(tmp_path, server, tiny_checkpoint) -> Path:
    """A real (tiny, random) HAT checkpoint served over HTTP, behind a 404 mirror, in a registry."""
    data = tiny_checkpoint.read_bytes()
    arch = TINY_CONFIG.to_dict()
    keys = ("embed_dim", "depths", "num_heads", "window_size", "compress_ratio", "squeeze_factor", "mlp_ratio")
    model_table = {
        "family": "tiny",
        "scale": 2,
        "file": "tiny_x2.pth",
        "sha256": sha256(data),
        "size": len(data),
        "urls": [server.url("/missing/tiny_x2.pth"), server.serve("/tiny_x2.pth", data)],
    }
    families = {"tiny": {k: arch[k] for k in keys}}
    return write_registry(tmp_path / "tiny.toml", {"tiny-x2": model_table}, families=families)


def test_upscale_downloads_the_model_then_runs_offline(
    cache, server, tiny_registry, tiny_checkpoint, tmp_path, monkeypatch
):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    image.save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = hat("upscale", tmp_path / "in.png", "-o", out, "--model", "tiny-x2", "--registry", tiny_registry)
    assert result.exit_code == 0, result.output
    assert server.hits("/tiny_x2.pth") == [None] and len(server.hits("/missing/tiny_x2.pth")) == 1
    expected = Upscaler.from_file(tiny_checkpoint, device="cpu").upscale(image)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert Image.open(out).size == (20, 24)

    # Cached now: --offline works without a request; after rm it fails and names the import command.
    monkeypatch.setenv("HAT_REGISTRY", str(tiny_registry))
    args = ("upscale", tmp_path / "in.png", "-o", out, "--overwrite", "--model", "tiny-x2", "--offline")
    assert hat(*args).exit_code == 0
    assert hat("models", "rm", "tiny-x2").exit_code == 0
    requests = len(server.requests)
    result = hat(*args)
    message = error_line(result)
    assert message.startswith("error: offline (HAT_OFFLINE=1 or --offline): model tiny-x2 is not cached")
    assert "file tiny_x2.pth" in message and "hat models import FILE --name tiny-x2" in message
    assert len(server.requests) == requests


def test_import_sweeps_temporary_files_of_killed_imports(cache, registry, tmp_path):
    """A temporary left by a killed import (its lock died with it) goes; a live one (locked) stays."""
    checkpoints = cache / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    orphan, live = checkpoints / f".a.pth.0badf00d{TEMP_SUFFIX}", checkpoints / f".b.pth.0c0ffee0{TEMP_SUFFIX}"
    orphan.write_bytes(b"killed mid-copy")
    live.write_bytes(b"another import, still writing")
    with open(live, "rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # as the writing process holds it
        fetched = tmp_path / "from_drive.pth"
        fetched.write_bytes(DATA2)
        result = hat("models", "import", fetched, "--registry", registry)
        assert result.exit_code == 0, result.output
        assert not orphan.exists() and live.exists()
