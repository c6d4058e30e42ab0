"""HAT network and its configuration (imports only torch and einops)."""

from .arch import HAT
from .config import HATConfig, NotHATStateDict, detect_config

__all__ = ["HAT", "HATConfig", "NotHATStateDict", "detect_config"]
