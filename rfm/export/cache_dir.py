"""Where rfm keeps what it builds once and reuses: serving engines and traced text encoders."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RFM_CACHE_DIR"
SHIPPED_ENV = "RFM_ENGINE_PATH"  # read-only caches searched after the writable one (e.g. exports baked into an image)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """--engine-cache, else $RFM_CACHE_DIR, else $XDG_CACHE_HOME/rfm/engines (~/.cache/rfm/engines)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rfm" / "engines"


def shipped_roots() -> list[Path]:
    """$RFM_ENGINE_PATH: engine caches made ahead of time (`rfm serve --prepare`), read but never written, in order."""
    return [Path(d) for d in os.environ.get(SHIPPED_ENV, "").split(os.pathsep) if d]
