"""One training run per output directory: a second `rfm train` into an --out that a running one writes is refused at
once, instead of the two interleaving their logs and replacing each other's checkpoints. The lock is the operating
system's (rfm.files.DirectoryLock), so a run that dies, however it dies, holds it no longer: its data loader
workers, still exiting, do not hold it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rfm.files import DirectoryLock, LockHeld

LOCK_FILE = ".rfm-train.lock"


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.rfm-train.lock for the run; FileExistsError naming the holder if another run holds it. A run that
    created OUT and ends without writing anything (refused by a check) leaves no OUT behind. Where the file system
    has no locks (or on Windows), the run goes ahead unlocked."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out / LOCK_FILE)
    try:
        lock.acquire()
    except LockHeld as e:
        raise FileExistsError(f"{out}: another rfm train is writing this run ({e.holder}); wait for it to end, stop "
                              f"it, or choose another --out") from None
    try:
        yield
    finally:
        if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:  # refused before writing anything:
            (out / LOCK_FILE).unlink()  # leave no run directory behind
            out.rmdir()
        lock.release()
