"""Audit log: one JSON line per answered or refused action request, written by a background thread (never on the hot
path).

The file is reopened when it is moved away (logrotate's rename-and-create, as logging's WatchedFileHandler does),
and records queued past `max_queued` (a stalled disk) are dropped and counted rather than held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger("rfm.serving")


def action_summary(actions: np.ndarray) -> dict:
    """Small, fixed-size record of a chunk (H, D_a): first action and per-dim min/max, rounded."""
    r = lambda a: [round(float(v), 5) for v in a]
    return {"shape": list(actions.shape), "first": r(actions[0]), "min": r(actions.min(0)), "max": r(actions.max(0))}


class AuditLog:
    """Append-only JSON-lines file. `write(record)` only enqueues; a daemon thread formats and writes."""

    def __init__(self, path: str | Path, max_queued: int = 20_000) -> None:  # (each holds its chunk until written)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.max_queued, self.dropped = max_queued, 0
        self._thread = threading.Thread(target=self._run, name="rfm-audit", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        if self._queue.qsize() >= self.max_queued:  # the disk stalls: lose records, not the server's memory
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("audit log %s: %d records dropped, %d waiting for the disk", self.path, self.dropped,
                            self._queue.qsize())
            return
        record.setdefault("time", time.time())
        self._queue.put(record)

    def _reopen_if_moved(self) -> None:
        """A rotated log (renamed, a new one created or not yet): write to the file at `path` again."""
        try:
            now, open_ = (None, None) if self._fh.closed else (os.stat(self.path), os.fstat(self._fh.fileno()))
            moved = now is None or (now.st_dev, now.st_ino) != (open_.st_dev, open_.st_ino)
        except FileNotFoundError:
            moved = True
        if moved:
            self._fh.close()  # (a no-op on one already closed: a reopen that failed is tried again next time)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _run(self) -> None:
        while True:
            rec = self._queue.get()
            if rec is None:
                break
            lines = [rec]
            while True:  # write everything already queued in one go
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._flush(lines)
                    return
                lines.append(nxt)
            self._flush(lines)

    def _flush(self, records: list[dict]) -> None:
        try:
            self._reopen_if_moved()
            for rec in records:
                if isinstance(rec.get("actions"), np.ndarray):
                    rec["actions"] = action_summary(rec["actions"])
                rec["time"] = datetime.fromtimestamp(rec["time"], timezone.utc).isoformat(timespec="milliseconds")
                self._fh.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
            self._fh.flush()
        except (OSError, ValueError, TypeError):
            log.exception("audit log write failed (%d records)", len(records))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5.0)
        self._fh.close()
