"""The ``hat`` command: a thin Typer layer over the library (the only package importing typer/rich).

One error boundary (:class:`HatGroup`) turns every :class:`~hat_cli.errors.HatError` into one line
on stderr and its exit code; ``HAT_DEBUG=1`` shows the traceback instead. SIGTERM is turned into
:class:`~hat_cli.errors.Terminated` (a ``KeyboardInterrupt``) for the whole command, so it cleans up
like Ctrl-C and exits 143; a closed stdout ends the command quietly with 141.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # recent typer carries its own copy of click; older versions use the click package
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError

from ..errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SOME_FAILED,
    EXIT_STDOUT_CLOSED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    HatError,
    Terminated,
)
from ..threads import prepare_openmp
from ..version import __version__
from .console import StdoutError, print_error, print_line
from .options import guard_help


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` in the main thread (once: a
    second SIGTERM during the cleanup it starts is ignored, so the cleanup finishes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe stays quiet."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _stdout_failed(exc: StdoutError) -> int:
    """The exit code for a stdout that cannot be written, said once on stderr unless it was closed."""
    _silence_stdout()
    if exc.closed:  # `hat ... | head`: the reader has what it wanted; end like Unix tools do
        return EXIT_STDOUT_CLOSED
    print_error(f"cannot write to standard output ({exc})")
    return EXIT_SOME_FAILED


def open_closed_standard_streams() -> None:
    """Give a standard descriptor closed by the caller (``hat ... >&-``, ``2>&-``, ``<&-``)
    /dev/null: the command runs with that stream discarded instead of failing on its first
    message, and no file it opens takes the number 1 or 2 (and with it, its messages)."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115  (lives as long as the process)


def _usage_line(exc: UsageError) -> str:
    """A usage error as one line, with where to find help."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} -h')"
    return message


def _json_summary_for_usage_error(args: Any, exc: UsageError) -> None:
    """``hat upscale ... --json`` promises a closing summary record, even for a bad option."""
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    if argv[:1] == ["upscale"] and "--json" in argv:
        from ..batch import Summary

        summary = Summary(error=_usage_line(exc), error_code=EXIT_USAGE)
        sys.stdout.write(json.dumps(summary.to_json()) + "\n")
        sys.stdout.flush()


class HatGroup(TyperGroup):
    """Root command group whose ``invoke`` is the single place where errors become exit codes
    (it wraps every sub-command, also under ``typer.testing.CliRunner``), and whose ``main`` prints
    click's usage errors as one ``error:`` line (exit 2) instead of a usage block and a box."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, **extra: Any):
        standalone = extra.pop("standalone_mode", True)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if not standalone:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
                exc.show()
                sys.exit(exc.exit_code)
            print_error(_usage_line(exc))
            _json_summary_for_usage_error(args, exc)
            sys.exit(EXIT_USAGE)
        except ClickException as exc:
            if not standalone:
                raise
            print_error(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone:
                raise
            print_line("aborted")
            sys.exit(1)
        # `hat --help` or `hat --version` (written while parsing, before invoke) into a closed or full stdout
        except StdoutError as exc:
            if not standalone:
                raise
            sys.exit(_stdout_failed(exc))
        if not standalone:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return guard_help(super().parse_args, ctx, args)

    def invoke(self, ctx: typer.Context):
        debug = bool(os.environ.get("HAT_DEBUG"))
        # Pillow warns about damaged or huge files (DecompressionBombWarning) as well as failing on
        # them; every command reports such a file in one line of its own (imageio's pixel limit).
        warnings.filterwarnings("ignore", module=r"PIL\.")
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except HatError as exc:
            if debug:
                raise
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except StdoutError as exc:
            raise typer.Exit(_stdout_failed(exc)) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            print_line("terminated" if terminated else "interrupted")
            raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own exits and usage errors
            raise
        except Exception as exc:  # a bug, not a user error: one line, traceback on request
            if debug:
                raise
            print_error(f"{type(exc).__name__}: {exc} (rerun with HAT_DEBUG=1 for the traceback)", "internal error")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=HatGroup,
    name="hat",
    help="Super-resolution with HAT (Hybrid Attention Transformer): exact, tiled, fast.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help and errors: no boxes, one placeholder style
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _print_version(value: bool) -> None:
    if value:
        print_line(f"hat {__version__}", err=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Super-resolution with HAT (Hybrid Attention Transformer): exact, tiled, fast."""


from . import models as _models  # noqa: E402  (registers sub-commands on import)
from .bench import bench  # noqa: E402
from .lam import lam  # noqa: E402
from .options import HatCommand, ModelOrderCommand  # noqa: E402
from .train import train  # noqa: E402
from .upscale import HELP as UPSCALE_HELP  # noqa: E402
from .upscale import upscale  # noqa: E402

app.command(cls=HatCommand, help=UPSCALE_HELP)(upscale)
app.command(cls=ModelOrderCommand)(bench)  # ModelOrderCommand: --model/--weights kept in command-line order
app.command(cls=HatCommand)(train)
app.command(cls=ModelOrderCommand)(lam)
app.add_typer(_models.app, name="models")


def main() -> None:
    open_closed_standard_streams()
    prepare_openmp()  # before torch is imported: OpenMP threads sleep, not spin, while they wait
    app()
