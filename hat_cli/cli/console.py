"""Rich consoles: results on stdout, messages and progress on stderr (keeps stdout scriptable).

Every message that carries user text (paths, file contents, library errors) goes through
:func:`print_error` / :func:`print_warning` / :func:`print_line`, which escape it: a ``[/]`` in a
file name is text, never rich markup, ``:smile:`` is not an emoji, and a control character (a
newline in a file name) is shown as ``\\n``, so a message stays one line. Plain stdout output
(JSON, paths) goes through :func:`echo`.

Both consoles write through :class:`GuardedStream`: a file name that the stream's encoding cannot
hold (undecodable bytes under ``PYTHONIOENCODING=utf-8:strict``) is written with ``\\xNN``
escapes instead of crashing, and a closed or full stdout becomes one :class:`StdoutError` that the
error boundary turns into a quiet exit (closed pipe) or one line (anything else).
"""

from __future__ import annotations

import errno
import re
import sys
from typing import TextIO

from rich.console import Console
from rich.markup import escape


class StdoutError(Exception):
    """Standard output cannot be written: ``closed`` when its reader went away (EPIPE)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))
        self.closed = isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match[0])
    # os.fsdecode turns an undecodable byte b into U+DC00 + b (PEP 383): show the byte.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes as ``\\xNN`` (so any UTF-8 stream takes it)."""
    return _SURROGATE.sub(_escape_surrogate, text)


def one_line(text: object) -> str:
    """``str(text)`` as one printable line: control characters as ``\\n``, ``\\x1b``..."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], printable(str(text)))


class GuardedStream:
    """``sys.stdout``/``sys.stderr`` looked up at each write (test runners swap them), writing
    what the stream's encoding cannot hold with escapes, and raising :class:`StdoutError` for a
    closed or failing stdout."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def stream(self) -> TextIO:
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        stream = self.stream
        try:
            try:
                return stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(stream, "encoding", None) or "utf-8"
                safe = printable(text).encode(encoding, "backslashreplace").decode(encoding)
                return stream.write(safe)
        except OSError as exc:
            if self.name == "stdout":
                raise StdoutError(exc) from exc
            return 0  # stderr gone: nowhere left to say anything

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            if self.name == "stdout":
                raise StdoutError(exc) from exc

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


console = Console(file=GuardedStream("stdout"), emoji=False, highlight=False)  # type: ignore[arg-type]
err_console = Console(file=GuardedStream("stderr"), stderr=True, emoji=False, highlight=False)  # type: ignore[arg-type]
_stdout = GuardedStream("stdout")


def print_error(message: object, prefix: str = "error") -> None:
    """``error: <message>`` on stderr, one line, the message escaped."""
    err_console.print(f"[bold red]{prefix}:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def print_warning(message: object) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def print_line(message: object, err: bool = True) -> None:
    """One line of plain text (no markup at all) on stderr, or stdout with ``err=False``."""
    (err_console if err else console).print(one_line(message), markup=False, highlight=False, soft_wrap=True)


def echo(text: str) -> None:
    """``text`` and a newline on stdout exactly as given (JSON, paths), flushed."""
    _stdout.write(text + "\n")
    _stdout.flush()
