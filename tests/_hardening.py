"""Helpers of the hardening tests (issue 13): the CLI in-process and as a real process, and the
"one line, documented exit code" check every hostile input must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from hat_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# The real entry point in a child process, reporting its own peak memory (ru_maxrss, KiB on Linux)
# on stderr's last line, so a test can bound what one command cost.
RSS_CHILD = """
import resource, sys
sys.argv = ["hat", *sys.argv[1:]]
try:
    from hat_cli.cli import main
    main()
finally:
    sys.stderr.write("\\nMAXRSS %d\\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def hat(*args: str | Path, input: str | None = None):
    """``hat ARGS`` through Typer's CliRunner (the error boundary included)."""
    return runner.invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args], input=input)


def one_error(result, code: int) -> str:
    """Exit ``code`` and exactly one ``error:`` line on stderr; returns that line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("HAT_DEBUG", None)
    return env


def run_measured(*args: str | Path, timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess, int]:
    """``hat ARGS`` in a child process: (completed process with the MAXRSS line removed from its
    stderr, peak resident memory in bytes)."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(**env),
    )
    head, _, rss = done.stderr.rstrip("\n").rpartition("\nMAXRSS ")
    done.stderr = head.strip("\n") + ("\n" if head.strip("\n") else "")
    return done, int(rss) * 1024


def save_png(path: Path, height: int = 8, width: int = 8, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


def temp_files(root: Path) -> list[Path]:
    """Our temporaries (``.NAME.*.hat-part``) anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".hat-part")]
