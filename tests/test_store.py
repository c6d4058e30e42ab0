"""Model store: downloads from a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hat_cli.errors import ConfigError, DownloadError, ModelNotAvailable
from hat_cli.registry import Preset, load_registry
from hat_cli.store import (
    DownloadProgress,
    RetryPolicy,
    cached_path,
    download_checkpoint,
    ensure_checkpoint,
    file_lock,
    partial_path,
)
from tests.store_server import LocalServer, cache_files, sha256, write_registry

FAST = RetryPolicy(retries=2, backoff=0.0, timeout=0.5)
SIZE = 300_000  # more than one 256 KiB read
DATA = os.urandom(SIZE)


def make_preset(tmp_path: Path, urls: list[str], data: bytes = DATA, size: int | None = SIZE, **extra) -> Preset:
    table = {"family": "hat-s", "scale": 2, "file": "rand_x2.pth", "sha256": sha256(data), "urls": urls, **extra}
    if size is not None:
        table["size"] = size
    registry = write_registry(tmp_path / "reg.toml", {"rand-x2": table})
    return load_registry(registry).presets["rand-x2"]


def test_download_verifies_caches_and_reports_progress(cache, server, tmp_path):
    url = server.serve("/a.pth", DATA)
    preset = make_preset(tmp_path, [url])
    events: list[DownloadProgress] = []
    result = download_checkpoint(preset, progress=events.append, policy=FAST)
    assert result.path == cached_path(preset) and result.url == url
    assert result.path.name == f"rand_x2.{sha256(DATA)[:12]}.pth"  # sha-bound name
    assert result.path.read_bytes() == DATA
    assert cache_files(cache) == [f"checkpoints/{result.path.name}"]  # no .part/.lock/temp left
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == SIZE and events[-1].finished
    assert all(e.total == SIZE for e in events)
    # Cached now: no second request.
    assert download_checkpoint(preset, policy=FAST).url is None
    assert ensure_checkpoint(preset) == result.path
    assert server.hits("/a.pth") == [None]


def test_dropped_connection_resumes_with_range(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["drop:100000", "reset:150000"])
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    path = download_checkpoint(preset, policy=FAST).path
    assert path.read_bytes() == DATA
    # The first try got 100000 bytes and the second resumed there; the reset (RST) may discard
    # some of the 150000 bytes sent before it, so the third resumes wherever the second stopped.
    hits = server.hits("/a.pth")
    assert hits[:2] == [None, "bytes=100000-"] and len(hits) == 3
    assert 100000 < int(hits[2].removeprefix("bytes=").rstrip("-")) <= 250000


def test_interrupted_download_resumes_on_the_next_run(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["drop:120000"])
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    with pytest.raises(DownloadError) as info:
        download_checkpoint(preset, policy=RetryPolicy(retries=0, backoff=0.0, timeout=0.5))
    assert "connection closed after 120000 of 300000 bytes" in str(info.value)
    assert f"120000 bytes kept in {partial_path(preset)}: run again to resume" in str(info.value)
    assert partial_path(preset).stat().st_size == 120000  # kept for resuming
    assert not cached_path(preset).exists()
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == [None, "bytes=120000-"]
    assert not partial_path(preset).exists()


def test_ctrl_c_keeps_the_partial_and_releases_the_lock(cache, server, tmp_path):
    server.serve("/a.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/a.pth")])

    def interrupt(event: DownloadProgress) -> None:
        if event.done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_checkpoint(preset, progress=interrupt, policy=FAST)
    kept = partial_path(preset).stat().st_size
    assert 0 < kept < SIZE
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA  # lock was released
    assert server.hits("/a.pth") == [None, f"bytes={kept}-"]


def test_server_errors_are_retried_with_backoff(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["status:500", "status:503"])
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    start = time.monotonic()
    download_checkpoint(preset, policy=RetryPolicy(retries=2, backoff=0.1, timeout=0.5))
    assert time.monotonic() - start >= 0.3  # waited 0.1 then 0.2 s
    assert len(server.hits("/a.pth")) == 3


def test_retries_exhausted_on_one_mirror_fall_through_to_the_next(cache, server, tmp_path):
    server.serve("/bad.pth", DATA, faults=["status:502"] * 3)
    good = server.serve("/good.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/bad.pth"), good])
    assert download_checkpoint(preset, policy=FAST).url == good
    assert len(server.hits("/bad.pth")) == 3  # 1 try + 2 retries


def test_404_falls_through_at_once_to_the_next_mirror(cache, server, tmp_path):
    good = server.serve("/good.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/missing.pth"), good])
    result = download_checkpoint(preset, policy=RetryPolicy(retries=5, backoff=10.0, timeout=0.5))
    assert result.url == good and result.path.read_bytes() == DATA
    assert len(server.hits("/missing.pth")) == 1  # no retry, no backoff


def test_every_mirror_failing_names_each_failure_and_the_import_command(cache, server, tmp_path):
    preset = make_preset(tmp_path, [server.url("/x.pth"), server.url("/y.pth")])
    with pytest.raises(DownloadError) as info:
        download_checkpoint(preset, policy=FAST)
    message = str(info.value)
    assert "/x.pth: HTTP 404" in message and "/y.pth: HTTP 404" in message
    assert "hat models import FILE --name rand-x2" in message and preset.sha256 in message
    assert cache_files(cache) == []


def test_wrong_bytes_report_both_hashes_and_leave_the_cache_empty(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["garbage"])
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    garbage = (bytes.fromhex(sha256(DATA)) * (SIZE // 32 + 1))[:SIZE]
    with pytest.raises(DownloadError) as info:
        download_checkpoint(preset, policy=FAST)
    assert f"expected {sha256(DATA)}, got {sha256(garbage)}" in str(info.value)
    assert cache_files(cache) == []
    assert len(server.hits("/a.pth")) == 1  # a wrong file is not retried on the same mirror


def test_wrong_bytes_on_one_mirror_then_the_next_mirror(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["garbage"])
    good = server.serve("/b.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/a.pth"), good])
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA


def test_size_unknown_to_the_registry_still_verified(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["drop:50000"])
    preset = make_preset(tmp_path, [server.url("/a.pth")], size=None)
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == [None, "bytes=50000-"]


def test_slow_mirror_times_out_then_next_mirror(cache, server, tmp_path):
    server.serve("/slow.pth", DATA, faults=["sleep:1.5"] * 2)
    good = server.serve("/good.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/slow.pth"), good])
    start = time.monotonic()
    result = download_checkpoint(preset, policy=RetryPolicy(retries=1, backoff=0.0, timeout=0.2))
    assert result.url == good
    assert len(server.hits("/slow.pth")) == 2
    assert time.monotonic() - start < 1.4  # gave up on each try after ~0.2 s


def test_unreachable_host_is_retried_once_only(cache, server, tmp_path):
    # A listening socket whose accept queue is full: connections hang like behind a firewall.
    import socket

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        port = blackhole.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        try:
            good = server.serve("/good.pth", DATA)
            preset = make_preset(tmp_path, [f"http://127.0.0.1:{port}/a.pth", good])
            start = time.monotonic()
            assert download_checkpoint(preset, policy=RetryPolicy(retries=5, backoff=0.0, timeout=0.3)).url == good
            assert time.monotonic() - start < 1.5  # two tries of 0.3 s, not six
            with pytest.raises(DownloadError, match=r"no connection within 0.3 s \(2 tries\)"):
                download_checkpoint(
                    make_preset(tmp_path, [f"http://127.0.0.1:{port}/b.pth"], data=DATA[:-1], size=SIZE - 1),
                    policy=RetryPolicy(retries=5, backoff=0.0, timeout=0.3),
                )
        finally:
            for filler in fillers:
                filler.close()


def test_stall_mid_body_times_out_and_resumes(cache, server, tmp_path):
    server.serve("/a.pth", DATA, faults=["stall:70000"])
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    result = download_checkpoint(preset, policy=RetryPolicy(retries=1, backoff=0.0, timeout=0.2))
    assert result.path.read_bytes() == DATA
    assert server.hits("/a.pth") == [None, "bytes=70000-"]


def test_server_ignoring_range_restarts_cleanly(cache, server, tmp_path):
    server.serve("/a.pth", DATA, ranges=False)
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    partial_path(preset).parent.mkdir(parents=True)
    partial_path(preset).write_bytes(b"\0" * 5000)  # wrong bytes: appending to them would fail the hash
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == ["bytes=5000-"]  # asked to resume, got 200 with the whole file


def test_partial_bigger_than_the_file_restarts(cache, server, tmp_path):
    server.serve("/a.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    partial_path(preset).parent.mkdir(parents=True)
    partial_path(preset).write_bytes(DATA + b"extra")
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == [None]


def test_partial_bigger_than_the_file_with_unknown_size_restarts_after_416(cache, server, tmp_path):
    server.serve("/a.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/a.pth")], size=None)
    partial_path(preset).parent.mkdir(parents=True)
    partial_path(preset).write_bytes(DATA + b"extra")
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == [f"bytes={SIZE + 5}-", None]


def test_corrupt_partial_is_discarded_and_downloaded_again(cache, server, tmp_path):
    server.serve("/a.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/a.pth")])
    partial_path(preset).parent.mkdir(parents=True)
    partial_path(preset).write_bytes(b"\1" * 1000)  # resumable in form, wrong in content
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.hits("/a.pth") == ["bytes=1000-", None]


def test_complete_partial_is_accepted_without_network(cache, server, tmp_path):
    preset = make_preset(tmp_path, [server.url("/a.pth")])  # nothing served: any request would 404
    partial_path(preset).parent.mkdir(parents=True)
    partial_path(preset).write_bytes(DATA)
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
    assert server.requests == []


def test_offline_makes_no_request(cache, server, tmp_path, monkeypatch):
    preset = make_preset(tmp_path, [server.serve("/a.pth", DATA)])
    with pytest.raises(ModelNotAvailable) as info:
        ensure_checkpoint(preset, offline=True)
    message = str(info.value)
    assert "rand_x2.pth" in message and preset.sha256 in message
    assert "hat models import FILE --name rand-x2" in message
    monkeypatch.setenv("HAT_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="offline"):
        ensure_checkpoint(preset)
    assert server.requests == []
    monkeypatch.setenv("HAT_OFFLINE", "0")
    assert ensure_checkpoint(preset, policy=FAST).read_bytes() == DATA


def test_download_checkpoint_offline_raises_what_ensure_checkpoint_raises(cache, server, tmp_path, monkeypatch):
    preset = make_preset(tmp_path, [server.serve("/a.pth", DATA)])
    with pytest.raises(ModelNotAvailable) as ensured:
        ensure_checkpoint(preset, offline=True)
    with pytest.raises(ModelNotAvailable) as downloaded:
        download_checkpoint(preset, policy=FAST, offline=True)
    assert str(downloaded.value) == str(ensured.value)
    assert str(downloaded.value).startswith("offline (HAT_OFFLINE=1 or --offline): model rand-x2 is not cached")
    monkeypatch.setenv("HAT_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="offline"):
        download_checkpoint(preset, policy=FAST)
    assert server.requests == []
    monkeypatch.delenv("HAT_OFFLINE")
    path = download_checkpoint(preset, policy=FAST).path
    assert download_checkpoint(preset, offline=True).path == path  # cached: offline is fine


def test_redirects_followed_only_to_allowed_urls(cache, server, tmp_path):
    good = server.serve("/real.pth", DATA)
    server.serve("/moved.pth", DATA, faults=[f"redirect:{good}"])
    preset = make_preset(tmp_path, [server.url("/moved.pth")])
    assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA

    server.serve("/evil.pth", DATA, faults=["redirect:http://example.com/HAT.pth"])
    evil = make_preset(tmp_path, [server.url("/evil.pth")], data=DATA[:-1], size=SIZE - 1)
    with pytest.raises(DownloadError, match=r"redirect to http://example.com/HAT.pth refused"):
        download_checkpoint(evil, policy=FAST)


def test_html_page_is_not_taken_for_a_checkpoint(cache, server, tmp_path):
    server.serve("/drive", b"<html>confirm</html>", content_type="text/html; charset=utf-8")
    good = server.serve("/good.pth", DATA)
    preset = make_preset(tmp_path, [server.url("/drive"), good])
    assert download_checkpoint(preset, policy=FAST).url == good


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.pth", "ftp://127.0.0.1/a.pth", "file:///etc/passwd", "https:///nohost", "http://10.0.0.1/x"],
)
def test_registry_refuses_urls_that_are_not_https(tmp_path, url):
    with pytest.raises(ConfigError, match="is not https"):
        make_preset(tmp_path, [url])


def test_registry_accepts_https_and_loopback_http(tmp_path):
    preset = make_preset(tmp_path, ["https://example.com/a.pth", "http://127.0.0.1:8/a", "http://localhost/a"])
    assert len(preset.urls) == 3


@pytest.mark.parametrize("bad", ["../escape.pth", "sub/dir.pth", "..", ".hidden.pth"])
def test_cache_paths_never_leave_the_cache(cache, tmp_path, bad):
    with pytest.raises(ConfigError, match="file"):
        make_preset(tmp_path, ["https://example.com/a"], file=bad)
    # Presets built in code skip registry validation; the store checks again.
    good = make_preset(tmp_path, ["https://example.com/a"])
    forged = Preset(**{**good.__dict__, "file": bad})
    with pytest.raises(ConfigError, match="would leave the cache folder"):
        cached_path(forged)


def test_file_lock_serialises_threads(tmp_path):
    import threading

    lock_path = tmp_path / "x.lock"
    inside, overlaps = [0], []

    def worker() -> None:
        for _ in range(20):
            with file_lock(lock_path):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1] * 80
    assert not lock_path.exists()  # removed on release


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1"
    extra = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([*command.split(), *extra], check=True, capture_output=True)
    return cert, key


def test_https_mirror_with_an_untrusted_certificate_is_left_at_once(cache, server, tmp_path, tls_files):
    with LocalServer(tls=tls_files) as tls_server:
        https = tls_server.serve("/a.pth", DATA)
        preset = make_preset(tmp_path, [https])
        with pytest.raises(DownloadError, match="certificate verify failed"):
            download_checkpoint(preset, policy=RetryPolicy(retries=3, backoff=10.0, timeout=2.0))
        preset = make_preset(tmp_path, [https, server.serve("/a.pth", DATA)])
        start = time.monotonic()
        assert download_checkpoint(preset, policy=RetryPolicy(retries=3, backoff=10.0)).url.startswith("http:")
        assert time.monotonic() - start < 5  # not retried: a bad certificate does not heal
        assert tls_server.requests == []  # no request was sent over the unverified connection


def test_https_download_with_a_trusted_certificate(cache, tmp_path, tls_files, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))  # trust our certificate authority
    with LocalServer(tls=tls_files) as tls_server:
        preset = make_preset(tmp_path, [tls_server.serve("/a.pth", DATA, faults=["drop:80000"])])
        assert preset.urls[0].startswith("https://127.0.0.1:")
        assert download_checkpoint(preset, policy=FAST).path.read_bytes() == DATA
        assert tls_server.hits("/a.pth") == [None, "bytes=80000-"]
