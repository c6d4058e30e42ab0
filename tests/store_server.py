"""A real HTTP server on 127.0.0.1 for the model-store tests, with scripted faults.

Each served file has a queue of faults; every request consumes one (then files are served
normally):

* ``status:CODE``      answer with that HTTP status
* ``sleep:S``          wait S seconds before answering (client timeouts)
* ``drop:N``           send the headers for the whole body, N bytes of it, then close
* ``reset:N``          same, but abort the TCP connection (RST: ConnectionResetError)
* ``stall:N``          send N bytes, then go silent for 2 s (read timeout mid-body)
* ``garbage``          same length, wrong bytes
* ``redirect:URL``     302 to URL

A file served with ``length=False`` has no Content-Length (the body ends when the connection
closes), with ``chunked=True`` it is sent in HTTP chunks; ``endless=True`` follows the data with
zero bytes until the client hangs up (a runaway mirror).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    data: bytes
    faults: list[str] = field(default_factory=list)
    ranges: bool = True  # honour Range requests (206); False answers 200 with the whole file
    throttle: float = 0.0  # seconds to sleep per 16 KiB sent
    content_type: str = "application/octet-stream"
    length: bool = True  # send Content-Length
    chunked: bool = False  # Transfer-Encoding: chunked (implies no Content-Length)
    endless: bool = False  # after the data, zeros until the client hangs up (or endless_limit)
    endless_limit: int = 256 << 20  # a guard, so a client that never stops cannot hang a test
    sent: int = 0  # body bytes written so far (all requests)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        owner = self.server.owner
        item = owner.files.get(self.path)
        with owner.lock:
            owner.requests.append((self.path, self.headers.get("Range")))
            fault = item.faults.pop(0) if item is not None and item.faults else ""
        if item is None:
            self.send_error(404)
            return
        kind, _, arg = fault.partition(":")
        if kind == "status":
            self.send_error(int(arg))
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", arg)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "sleep":
            time.sleep(float(arg))
        data = item.data if kind != "garbage" else hashlib.sha256(item.data).digest() * (len(item.data) // 32 + 1)
        data = data[: len(item.data)]
        start = 0
        requested = self.headers.get("Range")
        if requested and item.ranges:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", item.content_type)
        if item.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif item.length and not item.endless:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if item.chunked or item.endless or not item.length:
            self._stream(item, body)
            return
        if kind in ("drop", "reset", "stall"):
            self.wfile.write(body[: int(arg)])
            self.wfile.flush()
            if kind == "stall":
                time.sleep(2.0)
            if kind == "reset":  # linger 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        for offset in range(0, len(body), 16384):
            self.wfile.write(body[offset : offset + 16384])
            if item.throttle:
                time.sleep(item.throttle)

    def _stream(self, item: Served, body: bytes) -> None:
        """The body without a length: chunked and/or endless, until done or the client leaves."""
        zeros = bytes(65536)

        def pieces():
            for offset in range(0, len(body), 16384):
                yield body[offset : offset + 16384]
            while item.endless and item.sent < item.endless_limit:
                yield zeros

        try:
            for piece in pieces():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if item.chunked else piece)
                item.sent += len(piece)
                if item.throttle:
                    time.sleep(item.throttle)
            if item.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up: what a runaway mirror sees
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalServer

    def handle_error(self, request, client_address):  # clients that time out break pipes: expected
        pass


class LocalServer:
    """``ThreadingHTTPServer`` on an ephemeral 127.0.0.1 port, run in a daemon thread; HTTPS
    when given a certificate chain (PEM certificate and key)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # Handshake in the handler thread, so a client refusing the certificate cannot stall the server.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}{path}"

    def serve(self, path: str, data: bytes, **options) -> str:
        self.files[path] = Served(data, **options)
        return self.url(path)

    def hits(self, path: str) -> list[str | None]:
        """The Range header of every request for ``path`` (None: no Range)."""
        with self.lock:
            return [rng for p, rng in self.requests if p == path]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_registry(path: Path, models: dict[str, dict], families: dict[str, dict] | None = None) -> Path:
    """A registry TOML (schema 1) with the given ``[models.NAME]`` tables."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = ["schema = 1", ""]
    for name, table in (families or {}).items():
        lines += [f"[families.{name}]", *(f"{k} = {value(v)}" for k, v in table.items()), ""]
    for name, table in models.items():
        lines += [f'[models."{name}"]', *(f"{k} = {value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cache_files(cache: Path) -> list[str]:
    """Every file under the cache folder (relative names), to prove nothing is left behind."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())
