"""The sample picture shipped inside the package (see ``README.md`` here for its origin and licence).

``hat upscale --sample`` and the README's quick start use it, so a fresh install can show what it
does without any file of the user's.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_NAME = "parrots.png"


def sample_path() -> Path:
    """Where the bundled sample picture (160x160 RGB PNG, Kodak ``kodim23``) lies."""
    return Path(str(resources.files(__name__))) / SAMPLE_NAME


__all__ = ["SAMPLE_NAME", "sample_path"]
