"""Audit log: one JSON line per answered request, written by a background thread (never on the hot path)."""

from __future__ import annotations

import json
import logging
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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="rfm-audit", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        record.setdefault("time", time.time())
        self._queue.put(record)

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
