"""The model store: where checkpoints live (:mod:`.paths`), how they are downloaded
(:mod:`.download`), hashed (:mod:`.hashing`) and locked (:mod:`.lock`), and cache maintenance
(:mod:`.cache`). Progress display is the CLI's (``hat_cli.cli.progress``).
"""

from __future__ import annotations

from .cache import VerifyResult, import_checkpoint, presets_by_name, remove_checkpoint, verify_checkpoint
from .download import (
    DownloadProgress,
    DownloadResult,
    ProgressCallback,
    RetryPolicy,
    download_checkpoint,
    ensure_checkpoint,
)
from .hashing import sha256_file
from .lock import file_lock
from .paths import (
    CACHE_ENV,
    OFFLINE_ENV,
    cache_dir,
    cached_path,
    checkpoints_dir,
    expected_sha256,
    is_offline,
    local_checkpoint,
    partial_path,
    require_checkpoint,
)

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "DownloadProgress",
    "DownloadResult",
    "ProgressCallback",
    "RetryPolicy",
    "VerifyResult",
    "cache_dir",
    "cached_path",
    "checkpoints_dir",
    "download_checkpoint",
    "ensure_checkpoint",
    "expected_sha256",
    "file_lock",
    "import_checkpoint",
    "is_offline",
    "local_checkpoint",
    "partial_path",
    "presets_by_name",
    "remove_checkpoint",
    "require_checkpoint",
    "sha256_file",
    "verify_checkpoint",
]
