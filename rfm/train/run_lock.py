"""One training run per output directory: a second `rfm train` into an --out that a running one writes is refused at
once, instead of the two interleaving their logs and replacing each other's checkpoints. The lock is the operating
system's (flock), so a run that dies, however it dies, holds it no longer."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".rfm-train.lock"


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.rfm-train.lock for the run; FileExistsError naming the holder if another run holds it. A run that
    created OUT and ends without writing anything (refused by a check) leaves no OUT behind. Where the file system
    has no locks (or on Windows), the run goes ahead unlocked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as f:
        locked = True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FileExistsError(f"{out}: another rfm train is writing this run ({holder}); wait for it to end, stop "
                                  f"it, or choose another --out") from None
        except OSError:  # a file system without flock: the run is not kept in an except block (its errors would
            locked = False  # read as raised while handling this one)
        if locked:
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
        try:
            yield
        finally:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:  # refused before writing anything:
                (out / LOCK_FILE).unlink()  # leave no run directory behind
                out.rmdir()
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)
