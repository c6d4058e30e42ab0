"""Typed errors raised by the library; the CLI turns them into one line and an exit code."""

from __future__ import annotations

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

# What each exit code means: the one definition that help texts are generated from.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "everything succeeded",
    EXIT_SOME_FAILED: "some inputs failed (unreadable image, output not writable)",
    EXIT_USAGE: "usage or configuration error (bad option, unknown model, bad or unsafe checkpoint)",
    EXIT_INTERNAL: "internal error (a bug: please report it; HAT_DEBUG=1 shows the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_code_table() -> str:
    """``code  meaning`` lines, one per exit code (for ``--help``)."""
    return "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())


class HatError(Exception):
    """Base class for every error a user can cause or fix.

    ``exit_code`` is what the CLI exits with; ``str(error)`` is the one line it prints.
    """

    exit_code: int = EXIT_USAGE


class ConfigError(HatError):
    """Bad option combination, unknown preset, invalid registry file."""


class CheckpointError(HatError):
    """A weights file that is missing, unreadable, unsafe or not a HAT checkpoint."""


class ModelNotAvailable(HatError):
    """A preset's checkpoint is not in the cache and cannot be fetched (offline, no mirror)."""


class DownloadError(HatError):
    """Every mirror failed, or what arrived does not match the registry's sha256/size."""


class InputImageError(HatError):
    """An input image that cannot be read, is too large, or has an unsupported mode."""

    exit_code = EXIT_SOME_FAILED


class OutputError(HatError):
    """An output that cannot be written (exists, permission, disk full)."""

    exit_code = EXIT_SOME_FAILED


class ImageTooSmall(InputImageError):
    """An input too small for what was asked of it (a LAM blur kernel, a benchmark scale): exit 2."""

    exit_code = EXIT_USAGE


class NonFiniteOutput(HatError):
    """The network returned NaN or infinite values, even in fp32: that image is not written."""

    exit_code = EXIT_SOME_FAILED


class DeviceOutOfMemory(HatError):
    """Out of memory even for the smallest tile (the tile size is halved on every failure first)."""

    exit_code = EXIT_SOME_FAILED
