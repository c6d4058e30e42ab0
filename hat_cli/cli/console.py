"""Rich consoles: results on stdout, messages and progress on stderr (keeps stdout scriptable)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
