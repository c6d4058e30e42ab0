"""The ``hat`` command: a thin Typer layer over the library (the only package importing typer/rich).

One error boundary (:class:`HatGroup`) turns every :class:`~hat_cli.errors.HatError` into one line
on stderr and its exit code; ``HAT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, HatError
from .console import print_error, print_line


class HatGroup(TyperGroup):
    """Root command group whose ``invoke`` is the single place where errors become exit codes
    (it wraps every sub-command, also under ``typer.testing.CliRunner``)."""

    def invoke(self, ctx: typer.Context):
        debug = bool(os.environ.get("HAT_DEBUG"))
        try:
            return super().invoke(ctx)
        except HatError as exc:
            if debug:
                raise
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print_line("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
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
    context_settings={"help_option_names": ["-h", "--help"]},
)

from . import models as _models  # noqa: E402  (registers sub-commands on import)
from .bench import BenchCommand, bench  # noqa: E402
from .lam import lam  # noqa: E402
from .train import train  # noqa: E402
from .upscale import upscale  # noqa: E402

app.command()(upscale)
app.command(cls=BenchCommand)(bench)
app.command()(train)
app.command(cls=BenchCommand)(lam)  # BenchCommand: --model/--weights kept in command-line order
app.add_typer(_models.app, name="models")


def main() -> None:
    app()
