"""Disk full and unwritable caches: one clear error naming the path, no junk left behind.

Real ENOSPC/EROFS come from a tiny tmpfs, which needs root with mount rights (skipped otherwise).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hat_cli.errors import ConfigError, DownloadError
from hat_cli.registry import Registry, load_registry
from hat_cli.store import RetryPolicy, download_checkpoint, import_checkpoint, partial_path
from tests.store_server import cache_files, sha256, write_registry

DATA = os.urandom(300_000)
FAST = RetryPolicy(retries=0, backoff=0.0, timeout=1.0)


@pytest.fixture
def registry(tmp_path, server) -> Registry:
    url = server.serve("/a.pth", DATA)
    table = {"family": "hat-s", "scale": 2, "file": "rand_x2.pth", "sha256": sha256(DATA), "size": len(DATA)}
    return load_registry(write_registry(tmp_path / "reg.toml", {"rand-x2": {**table, "urls": [url]}}))


def mount_tmpfs(where: Path, options: str) -> Path:
    where.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return where


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 64 KiB file system as the cache: a 300 kB download cannot fit."""
    where = mount_tmpfs(tmp_path / "small", "size=64k")
    monkeypatch.setenv("HAT_CACHE_DIR", str(where))
    monkeypatch.delenv("HAT_OFFLINE", raising=False)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def readonly_disk(tmp_path, monkeypatch):
    where = mount_tmpfs(tmp_path / "ro", "ro,size=64k")
    monkeypatch.setenv("HAT_CACHE_DIR", str(where / "hat"))
    monkeypatch.delenv("HAT_OFFLINE", raising=False)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_while_downloading(small_disk, registry):
    preset = registry.presets["rand-x2"]
    with pytest.raises(
        DownloadError, match=re.escape(f"disk full writing {partial_path(preset)} (No space left on device)")
    ):
        download_checkpoint(preset, policy=FAST)
    assert cache_files(small_disk) == []  # the useless partial is removed, the lock too


def test_disk_full_while_importing(small_disk, registry, tmp_path):
    source = tmp_path / "by_hand.pth"
    source.write_bytes(DATA)
    with pytest.raises(DownloadError, match=r"disk full writing .*No space left on device"):
        import_checkpoint(source, registry, name="rand-x2")
    assert cache_files(small_disk) == []


def test_read_only_cache(readonly_disk, registry, tmp_path):
    with pytest.raises(
        ConfigError,
        match=re.escape(
            f"cannot write {readonly_disk / 'hat' / 'checkpoints'} (Read-only file system): set HAT_CACHE_DIR"
        ),
    ):
        download_checkpoint(registry.presets["rand-x2"], policy=FAST)
    source = tmp_path / "by_hand.pth"
    source.write_bytes(DATA)
    with pytest.raises(ConfigError, match="Read-only file system"):
        import_checkpoint(source, registry)


def test_cache_dir_that_is_a_file(tmp_path, monkeypatch, registry, server):
    (tmp_path / "not_a_dir").write_text("")
    monkeypatch.setenv("HAT_CACHE_DIR", str(tmp_path / "not_a_dir"))
    with pytest.raises(ConfigError, match=r"cannot write .*not_a_dir/checkpoints \(Not a directory\)"):
        download_checkpoint(registry.presets["rand-x2"], policy=FAST)
    assert server.requests == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path, monkeypatch, registry):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    monkeypatch.setenv("HAT_CACHE_DIR", str(folder))
    with pytest.raises(ConfigError, match=r"cannot write .*locked/checkpoints \(Permission denied\)"):
        download_checkpoint(registry.presets["rand-x2"], policy=FAST)
