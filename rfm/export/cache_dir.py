"""Where rfm keeps what it builds once and reuses (serving engines, traced text encoders), and the key an engine is found by."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

from rfm._version import __version__
from rfm.runtime.manifest import EXPORT_FORMAT

log = logging.getLogger(__name__)

CACHE_ENV = "RFM_CACHE_DIR"
KEYED_FILES = ("config.json", "model.safetensors", "stats.json")  # what decides an exported graph
SHIPPED_ENV = "RFM_ENGINE_PATH"  # read-only caches searched after the writable one (e.g. exports baked into an image)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """--engine-cache, else $RFM_CACHE_DIR, else $XDG_CACHE_HOME/rfm/engines (~/.cache/rfm/engines)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rfm" / "engines"


def searchable(root: Path) -> bool:
    """Whether `root` is a directory this process can look into. One it may not (another user's cache, a directory
    a root-run build left mode 700) is skipped with one warning, not raised: serving matters more than a cache."""
    try:
        if not root.is_dir():
            return False
        if os.access(root, os.R_OK | os.X_OK):
            return True
        why = "permission denied"
    except OSError as e:  # a parent it may not enter: is_dir() raises PermissionError
        why = e.strerror or str(e)
    _warn_unsearchable(str(root), why)
    return False


@lru_cache(maxsize=32)
def _warn_unsearchable(root: str, why: str) -> None:
    log.warning("engine cache %s cannot be read (%s): no engines are read from it or written to it; pass "
                "--engine-cache DIR or set $%s to a directory this user may write", root, why, CACHE_ENV)


def shipped_roots() -> list[Path]:
    """$RFM_ENGINE_PATH: engine caches made ahead of time (`rfm serve --prepare`), read but never written, in order."""
    return list(_shipped_roots(os.environ.get(SHIPPED_ENV, "")))


@lru_cache(maxsize=8)
def _shipped_roots(value: str) -> tuple[Path, ...]:
    roots = tuple(Path(d) for d in value.split(os.pathsep) if d)
    for root in roots:  # a mistyped path would silently cost every start its export: say so, once
        with contextlib.suppress(OSError):  # (one it may not enter: searchable() says so when it is searched)
            if not root.is_dir():
                log.warning("$%s names %s, which is not a directory: no engines are read from it", SHIPPED_ENV, root)
    return roots


def checkpoint_key(checkpoint: str | Path) -> str:
    """sha256 over the checkpoint's config, weights and stats, the export format and the rfm version. Hashed once
    per process while the files stay the same ones (a start asks for it up to three times: bounding the cache,
    finding the engine, exporting it)."""
    root = Path(checkpoint).resolve()
    return _hashed(root, tuple(_identity(root / name) for name in KEYED_FILES))


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns): another file, or one written again, hashes again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=32)
def _hashed(root: Path, identity: tuple) -> str:
    h = hashlib.sha256(f"{EXPORT_FORMAT}|{__version__}".encode())
    for name in KEYED_FILES:
        path = root / name
        h.update(name.encode())
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
