"""Typed errors raised by the library; the CLI turns them into one line and an exit code."""

from __future__ import annotations

import textwrap

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_NETWORK = 4  # a download failed: every mirror, or the bytes that arrived, or storing them
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_STDOUT_CLOSED = 141  # standard output closed under us (`| head`): 128 + SIGPIPE, as Unix tools
EXIT_TERMINATED = 143  # SIGTERM (kill, timeout, docker stop, CI cancel): 128 + 15

# What each exit code means: the one definition (help texts are made from it; the README's table
# says the same, a test checks).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "everything succeeded (outputs skipped with --skip-existing count as success)",
    EXIT_SOME_FAILED: "some inputs failed (unreadable or too large image, output not writable, non-finite model "
    "output, out of memory even for the smallest tile or training batch), no image found in the inputs, some of "
    "several models failed to download, or standard output not writable (e.g. a full disk)",
    EXIT_USAGE: "usage or configuration error (bad option, unknown model, bad registry, bad or unsafe checkpoint, "
    "model not cached while offline, a bench or train folder without images), or a Ray cluster that cannot run "
    "the job (--engine ray: cannot connect, too small for the workers, workers that cannot start)",
    EXIT_INTERNAL: "internal error (a bug: please report it; HAT_DEBUG=1 shows the traceback)",
    EXIT_NETWORK: "download failed (every mirror failed, the bytes were not the registry's file, or the cache disk "
    "is full)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_STDOUT_CLOSED: "standard output closed by its reader (hat ... | head): stops quietly, like other Unix "
    "tools; outputs already written are complete",
    EXIT_TERMINATED: "terminated (SIGTERM): stops at once, temporary files removed, summary printed; hat train "
    "saves its checkpoint first",
}


def exit_code_table(width: int = 96) -> str:
    """``code  meaning`` per exit code, wrapped under the meaning (for ``--help``)."""
    return "\n".join(
        textwrap.fill(meaning, width, initial_indent=f"{code:>3}  ", subsequent_indent=" " * 5)
        for code, meaning in EXIT_CODES.items()
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HatError(Exception):
    """Base class for every error a user can cause or fix.

    ``exit_code`` is what the CLI exits with; ``str(error)`` is the one line it prints.
    """

    exit_code: int = EXIT_USAGE


class ConfigError(HatError):
    """Bad option combination, unknown preset, invalid registry file."""


class CheckpointError(HatError):
    """A weights file that is missing, unreadable, unsafe or not a HAT checkpoint."""


class ClusterError(HatError):
    """The Ray cluster cannot run the job: cannot connect, too few resources, workers cannot start."""


class ModelNotAvailable(HatError):
    """A preset's checkpoint is not in the cache and cannot be fetched (offline, no mirror)."""


class DownloadError(HatError):
    """Every mirror failed, or what arrived does not match the registry's sha256/size (exit 4)."""

    exit_code = EXIT_NETWORK


class InputImageError(HatError):
    """An input image that cannot be read, is too large, or has an unsupported mode."""

    exit_code = EXIT_SOME_FAILED


class OutputError(HatError):
    """An output that cannot be written (exists, permission, disk full)."""

    exit_code = EXIT_SOME_FAILED


class OutputExists(OutputError):
    """The output appeared (another process wrote it) and replacing it was not asked for."""


class ImageTooSmall(InputImageError):
    """An input too small for what was asked of it (a LAM blur kernel, a benchmark scale): exit 2."""

    exit_code = EXIT_USAGE


class NonFiniteOutput(HatError):
    """The network returned NaN or infinite values, even in fp32: that image is not written."""

    exit_code = EXIT_SOME_FAILED


class DeviceOutOfMemory(HatError):
    """Out of memory even for the smallest tile (the tile size is halved on every failure first)."""

    exit_code = EXIT_SOME_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: every cleanup that runs on Ctrl-C
    runs on it too (temporary files removed, training state saved); the CLI exits 143."""
