"""Where built artifacts (default world, tiny models, trained editors) are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$KEBENCH_CACHE``, else ``$XDG_CACHE_HOME/kebench``, else ``~/.cache/kebench``."""
    explicit = os.environ.get("KEBENCH_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kebench"
