"""Rich consoles: results on stdout, messages and progress on stderr (keeps stdout scriptable)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def download_progress(quiet: bool = False):
    """A tqdm bar (bytes, speed, ETA) on stderr for checkpoint downloads; None when quiet or when
    stderr is not a terminal (logs and pipes stay clean)."""
    import sys

    if quiet or not sys.stderr.isatty():
        return None
    from ..store import TqdmProgress

    return TqdmProgress(sys.stderr)
