"""Rich consoles: results on stdout, messages and progress on stderr (keeps stdout scriptable).

Every message that carries user text (paths, file contents, library errors) goes through
:func:`print_error` / :func:`print_warning` / :func:`print_line`, which escape it: a ``[/]`` in a
file name is text, never rich markup.
"""

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def print_error(message: object, prefix: str = "error") -> None:
    """``error: <message>`` on stderr, one line, the message escaped."""
    err_console.print(f"[bold red]{prefix}:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def print_warning(message: object) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def print_line(message: object, err: bool = True) -> None:
    """Plain text (no markup at all) on stderr, or stdout with ``err=False``."""
    (err_console if err else console).print(str(message), markup=False, highlight=False, soft_wrap=True)
