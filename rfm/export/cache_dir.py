"""Where rfm keeps what it builds once and reuses: serving engines and traced text encoders."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RFM_CACHE_DIR"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """--engine-cache, else $RFM_CACHE_DIR, else $XDG_CACHE_HOME/rfm/engines (~/.cache/rfm/engines)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rfm" / "engines"
