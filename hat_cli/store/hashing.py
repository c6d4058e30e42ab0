"""sha256 of files, in 1 MiB chunks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def hash_file(path: Path, hasher: hashlib._Hash | None = None) -> tuple[hashlib._Hash, int]:
    hasher = hasher or hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return hasher, size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    return hash_file(Path(path))[0].hexdigest()
