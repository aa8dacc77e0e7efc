"""What an engine cache holds, and pruning it: engines unused for a while, over a size, or whose checkpoint is gone.

Every fine-tune `rfm serve` starts on adds an engine (and the graphs traced to make it) to the cache, and nothing
else removes them: a server updated weekly, or a workstation serving each experiment, fills its disk. Everything in
the cache can be made again (an export, ~20 s), so pruning only costs a later start its export. An engine's last
use is its directory's modification time, touched each time a server loads it (`touch`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from rfm.export.cache_dir import KEYED_FILES, checkpoint_key, searchable
from rfm.files import is_abandoned, writer_tag
from rfm.runtime.manifest import EXPORT_FILE

ENGINE_NAME = re.compile(r"^(?P<name>.+)-(?P<kind>(?:openvino-)?(?:fp32|fp16|int8))-(?P<key>[0-9a-f]{16})"
                         r"(?:-cal[0-9a-f]{8})?$")
GRAPH_NAME = re.compile(r"^(?:policy|text-encoder)-[0-9a-f]{24}\.onnx$")
GRAPH_TEMP = re.compile(r"^\.(?:policy|text-encoder)-[0-9a-f]{24}\.onnx\.\d+-[0-9a-f]{8}$")  # graph_cache's temp


@dataclass
class CacheEntry:
    """One thing in the cache: an engine (an export directory), a traced graph, or what a killed export left."""

    path: Path
    kind: str  # "engine" | "graph" | "unfinished"
    bytes: int  # what deleting it frees (files another entry also links count nothing)
    last_used: float  # seconds since the epoch
    checkpoint: str | None = None  # an engine's source checkpoint, as its export.json records it
    status: str = ""  # an engine's: current, changed (other weights there now), missing, unknown, unreadable

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
    if not searchable(root):
        return []
    entries = []
    for path in root.iterdir():
        if path.is_dir() and (path / EXPORT_FILE).is_file() and ENGINE_NAME.match(path.name):
            entries.append(_engine(path, check_checkpoints))
        elif path.is_file() and GRAPH_NAME.match(path.name):
            entries.append(CacheEntry(path, "graph", _bytes(path), path.stat().st_mtime))
        elif _unfinished(path):
            entries.append(CacheEntry(path, "unfinished", _bytes(path), path.stat().st_mtime))
    return sorted(entries, key=lambda e: e.last_used)


def prune(root: Path, unused_days: float | None = None, max_bytes: int | None = None, stale: bool = False,
          keep: Iterable[Path] = (), dry_run: bool = False, min_age_s: float = 0.0,
          refused: list[CacheEntry] | None = None) -> list[CacheEntry]:
    """Delete from `root`, and return, what a killed export left; engines unused for `unused_days`; engines whose
    checkpoint is missing, holds other weights or whose export.json cannot be read (`stale`); then the least
    recently used until the cache takes at most `max_bytes` of disk.

    An engine goes with the graphs only it links (they free nothing without it, and it frees little without them:
    the graphs are most of its size), and a graph another engine still links stays. Entries in `keep` (the engine a
    server is about to load), entries used in the last `min_age_s` (another server loading them) and entries being
    exported (their lock held) stay. `dry_run` deletes nothing and returns the same list. Entries meant to go that
    could not (an export of them running, permissions) are appended to `refused`."""
    now = time.time()
    entries = scan(root, check_checkpoints=stale)
    keep = {Path(p).resolve() for p in keep}
    files = {id(e): _inodes(e.path) for e in entries}
    remaining = list(entries)
    doomed: list[CacheEntry] = []

    def drop(unit: list[CacheEntry]) -> None:
        doomed.extend(unit)
        for e in unit:
            remaining.remove(e)

    def stays(unit: list[CacheEntry]) -> bool:
        return any(e.path.resolve() in keep or now - e.last_used < min_age_s for e in unit)

    for e in entries:
        if e.kind == "unfinished":
            drop([e])
    for unit in _units(remaining, files):
        used = max(e.last_used for e in unit)
        head = unit[0]
        if stays(unit):
            continue
        if (unused_days is not None and now - used > unused_days * 86400) or (
                stale and head.kind == "engine" and head.status in ("changed", "missing", "unreadable")):
            drop(unit)
    while max_bytes is not None and _disk(remaining, files) > max_bytes:
        units = [u for u in _units(remaining, files) if not stays(u)]
        if not units:
            break
        drop(min(units, key=lambda u: max(e.last_used for e in u)))  # the least recently used
    removed = [e for e in doomed if dry_run or _remove(e)]
    if refused is not None:
        refused.extend(e for e in doomed if e not in removed)
    return removed


def _units(entries: list[CacheEntry], files: dict) -> list[list[CacheEntry]]:
    """What is deleted together: each engine with the graphs no other engine links (engine first), and each graph no
    engine links alone. A graph several engines link belongs to none until all but one are gone."""
    engines = [e for e in entries if e.kind == "engine"]
    units = {id(e): [e] for e in engines}
    for g in (e for e in entries if e.kind == "graph"):
        linked = [e for e in engines if files[id(g)].keys() & files[id(e)].keys()]
        if len(linked) == 1:
            units[id(linked[0])].append(g)
        elif not linked:
            units[id(g)] = [g]
    return list(units.values())


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


def _engine(path: Path, check_checkpoints: bool) -> CacheEntry:
    try:  # the file alone, not read_manifest's checks: another rfm's export, or a damaged one, is still an entry
        checkpoint = json.loads((path / EXPORT_FILE).read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return CacheEntry(path, "engine", _bytes(path), path.stat().st_mtime, None, "unreadable")
    status = _checkpoint_status(checkpoint, ENGINE_NAME.match(path.name)["key"]) if check_checkpoints else ""
    return CacheEntry(path, "engine", _bytes(path), path.stat().st_mtime, checkpoint, status)


def _checkpoint_status(checkpoint: str | None, key: str) -> str:
    if not checkpoint or not Path(checkpoint).is_absolute():
        return "unknown"  # an export made by an older rfm, which recorded the path as given
    if not all((Path(checkpoint) / f).is_file() for f in KEYED_FILES[:2]):
        return "missing"
    return "current" if checkpoint_key(checkpoint)[:16] == key else "changed"


def _unfinished(path: Path) -> bool:
    """A temp directory of an export (rfm.files) or a temp graph file whose writer on this host is gone."""
    if path.is_dir() and ".tmp-" in path.name and path.name.startswith("."):
        return is_abandoned(path, ".tmp-")
    return bool(GRAPH_TEMP.match(path.name)) and path.is_file() and is_abandoned(path, ".onnx.")


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
        if entry.path.is_dir():  # renamed aside first: a deletion that fails half way leaves no broken engine
            aside = entry.path.parent / f".{entry.path.name}.tmp-{writer_tag()}-pruned"
            try:
                os.replace(entry.path, aside)
            except OSError:
                return False
            shutil.rmtree(aside, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        return not entry.path.exists()
    finally:
        lock.release()  # (its file stays: deleting it under a process waiting on it would let two hold the lock)


__all__ = ["CacheEntry", "disk_usage", "prune", "scan", "touch"]
