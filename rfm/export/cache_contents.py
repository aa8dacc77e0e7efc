"""What an engine cache holds, and pruning it: engines unused for a while, over a size, or whose checkpoint is gone.

Every fine-tune `rfm serve` starts on adds an engine (and the graphs traced to make it) to the cache, and nothing
else removes them: a server updated weekly, or a workstation serving each experiment, fills its disk. Everything in
the cache can be made again (an export, ~20 s), so pruning only costs a later start its export. An engine's last
use is its directory's modification time, touched each time a server loads it (`touch`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from rfm.files import is_abandoned
from rfm.runtime.manifest import EXPORT_FILE, read_manifest

ENGINE_NAME = re.compile(r"^(?P<name>.+)-(?P<kind>(?:openvino-)?(?:fp32|fp16|int8))-(?P<key>[0-9a-f]{16})"
                         r"(?:-cal[0-9a-f]{8})?$")
GRAPH_NAME = re.compile(r"^(?:policy|text-encoder)-[0-9a-f]{24}\.onnx$")
GRAPH_TEMP = re.compile(r"^\.(?:policy|text-encoder)-[0-9a-f]{24}\.onnx\.(?P<pid>\d+)-[0-9a-f]{8}$")


@dataclass
class CacheEntry:
    """One thing in the cache: an engine (an export directory), a traced graph, or what a killed export left."""

    path: Path
    kind: str  # "engine" | "graph" | "unfinished"
    bytes: int  # what deleting it frees (files another entry also links count nothing)
    last_used: float  # seconds since the epoch
    checkpoint: str | None = None  # an engine's source checkpoint, as its export.json records it
    status: str = ""  # an engine's: current, changed (other weights there now), missing (none), unknown

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "bytes": self.bytes,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used)),
                "checkpoint": self.checkpoint, "status": self.status}


def touch(entry: Path) -> None:
    """Mark an engine or graph as used now (a read-only cache, shipped in an image, is left as it is)."""
    try:
        os.utime(entry)
    except OSError:
        pass


def scan(root: Path, check_checkpoints: bool = True) -> list[CacheEntry]:
    """Everything prunable in `root`, oldest use first. `check_checkpoints` hashes each engine's checkpoint to say
    whether it still holds the weights the engine was made from."""
    root = Path(root)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.is_dir() and (path / EXPORT_FILE).is_file() and ENGINE_NAME.match(path.name):
            entries.append(_engine(path, check_checkpoints))
        elif path.is_file() and GRAPH_NAME.match(path.name):
            st = path.stat()
            entries.append(CacheEntry(path, "graph", st.st_size if st.st_nlink == 1 else 0, st.st_mtime))
        elif _unfinished(path):
            entries.append(CacheEntry(path, "unfinished", _bytes(path), path.stat().st_mtime))
    return sorted(entries, key=lambda e: e.last_used)


def prune(root: Path, unused_days: float | None = None, max_bytes: int | None = None, stale: bool = False,
          keep: Iterable[Path] = (), dry_run: bool = False) -> list[CacheEntry]:
    """Delete from `root`, and return, what a killed export left; engines and graphs unused for `unused_days`;
    engines whose checkpoint is missing or holds other weights (`stale`); then the least recently used until the
    cache takes at most `max_bytes` of disk. Entries in `keep` (the engine a server is about to load) stay, and so
    does an entry being exported right now (its lock held). `dry_run` deletes nothing and returns the same list."""
    now = time.time()
    entries = scan(root, check_checkpoints=stale)
    keep = {Path(p).resolve() for p in keep}
    files = {id(e): _inodes(e.path) for e in entries}
    left = [e for e in entries if e.path.resolve() not in keep]
    doomed = [e for e in left if e.kind == "unfinished"
              or (unused_days is not None and now - e.last_used > unused_days * 86400)
              or (stale and e.kind == "engine" and e.status in ("changed", "missing"))]
    if max_bytes is not None:
        remaining = [e for e in entries if e not in doomed]
        for e in left:  # oldest use first
            if _disk(remaining, files) <= max_bytes:
                break
            if e in doomed or (e.kind == "graph" and _shared(e, remaining, files)):
                continue  # a graph an engine kept links frees nothing, and speeds that checkpoint's next export
            doomed.append(e)
            remaining.remove(e)
    return [e for e in doomed if dry_run or _remove(e)]


def disk_usage(entries: list[CacheEntry]) -> int:
    """Bytes of disk the entries take together (a file linked by several of them counted once)."""
    return _disk(entries, {id(e): _inodes(e.path) for e in entries})


def _inodes(path: Path) -> dict[tuple[int, int], int]:
    """(device, inode) -> size of every file under `path` (an engine's files may be links to cached graphs)."""
    out = {}
    for f in [path] if path.is_file() else path.rglob("*"):
        if f.is_file():
            st = f.stat()
            out[(st.st_dev, st.st_ino)] = st.st_size
    return out


def _disk(entries: list[CacheEntry], files: dict) -> int:
    """Disk the entries take together, each file once however many of them link it."""
    seen: dict[tuple[int, int], int] = {}
    for e in entries:
        seen.update(files[id(e)])
    return sum(seen.values())


def _shared(entry: CacheEntry, others: list[CacheEntry], files: dict) -> bool:
    mine = files[id(entry)].keys()
    return any(o is not entry and mine & files[id(o)].keys() for o in others)


def _engine(path: Path, check_checkpoints: bool) -> CacheEntry:
    manifest = read_manifest(path)
    checkpoint = manifest.get("checkpoint")
    status = ""
    if check_checkpoints:
        status = _checkpoint_status(checkpoint, ENGINE_NAME.match(path.name)["key"])
    return CacheEntry(path, "engine", _bytes(path), path.stat().st_mtime, checkpoint, status)


def _checkpoint_status(checkpoint: str | None, key: str) -> str:
    from rfm.export.cache_dir import KEYED_FILES, checkpoint_key

    if not checkpoint or not Path(checkpoint).is_absolute():
        return "unknown"  # an export made by an older rfm, which recorded the path as given
    if not all((Path(checkpoint) / f).is_file() for f in KEYED_FILES[:2]):
        return "missing"
    return "current" if checkpoint_key(checkpoint)[:16] == key else "changed"


def _unfinished(path: Path) -> bool:
    """A temp directory of an export (rfm.files) or a temp graph file whose writer on this host is gone."""
    if path.is_dir() and ".tmp-" in path.name and path.name.startswith("."):
        return is_abandoned(path, ".tmp-")
    m = GRAPH_TEMP.match(path.name)
    if m and path.is_file() and os.name != "nt":  # (os.kill(pid, 0) would terminate the process there)
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
    return False


def _bytes(path: Path) -> int:
    """Bytes that deleting `path` frees: files with one link (a graph an engine shares stays on disk)."""
    if path.is_file():
        st = path.stat()
        return st.st_size if st.st_nlink == 1 else 0
    total = 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            total += st.st_size if st.st_nlink == 1 else 0
    return total


def _remove(entry: CacheEntry) -> bool:
    """Delete an entry unless an export of it is running (its lock held); False if it stayed."""
    lock = FileLock(entry.path.parent / f".{entry.path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return False
    try:
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        return not entry.path.exists()
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


__all__ = ["CacheEntry", "disk_usage", "prune", "scan", "touch"]
