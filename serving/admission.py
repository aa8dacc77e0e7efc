"""Admission by deadline: refuse at once a request the server cannot answer before its deadline.

Queueing a request that will miss its deadline only makes it fail later and delays the ones behind it. The batcher
asks `BatchCostModel` how long the work ahead of a new request takes (the running batch's remainder plus the full
batches queued before it) and how long the request's own batch takes; if that ends after the deadline the request is
refused with 503 + Retry-After, so the requests the server accepts keep their latency under overload.
"""

from __future__ import annotations

import math
import threading

import numpy as np


class WouldMissDeadline(Exception):
    """The request cannot finish before its deadline with the work already queued (503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineTooShort(ValueError):
    """The request's deadline_ms is below the server's min_deadline_ms (a few inferences of the model on an idle
    server): it could not be met reliably under any load, so it is the request that is wrong (422)."""


def min_deadline_ms(batch1_seconds: float | None) -> float:
    """The shortest deadline_ms a server accepts by default: 5x its warm batch-1 inference (room for a busy CPU),
    rounded up to 5 ms, and at least 10 ms."""
    if batch1_seconds is None:
        return 10.0
    return max(10.0, 5.0 * math.ceil(5 * 1000 * batch1_seconds / 5.0))


class BatchCostModel:
    """Seconds per batch as a + c * batch_size, fitted to each batch size's recent runtime.

    Inference on a CPU grows about linearly with the batch. Each size keeps a running average (weight `alpha` on the
    newest batch) and its latest runtime, and the larger of the two counts: a slowdown (a neighbour taking the
    cores) is believed at once, a speed-up over a few batches, so under doubt the server refuses rather than lets a
    request miss its deadline. Before any batch is seen it predicts nothing (admit everything).
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._avg: dict[int, tuple[float, float]] = {}  # size -> (running average, max(average, latest))
        self._fit: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def observe(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            old = self._avg.get(batch_size)
            avg = seconds if old is None else old[0] + self.alpha * (seconds - old[0])
            self._avg[batch_size] = (avg, max(avg, seconds))
            self._fit = None

    def predict(self, batch_size: int) -> float | None:
        """Expected seconds for a batch of `batch_size`; None before the first observation."""
        with self._lock:
            if not self._avg:
                return None
            if self._fit is None:
                sizes = np.array(sorted(self._avg), float)
                secs = np.array([self._avg[int(b)][1] for b in sizes])
                if len(sizes) == 1:  # one point: proportional to the batch
                    self._fit = (0.0, secs[0] / sizes[0])
                else:
                    c, a = np.polyfit(sizes, secs, 1)
                    self._fit = (max(a, 0.0), max(c, 1e-6))
            a, c = self._fit
            if batch_size in self._avg:
                return self._avg[batch_size][1]
            return a + c * batch_size


def expected_finish(model: BatchCostModel, now: float, running: tuple[float, int] | None, queued: int,
                    max_batch: int) -> float | None:
    """When a request submitted now would finish: the running batch's rest, the full batches queued ahead of it,
    then its own batch (of the requests left at its position). None when the model has no data yet."""
    own = model.predict(queued % max_batch + 1)
    if own is None:
        return None
    t = now
    if running is not None:
        started, size = running
        t = max(now, started + (model.predict(size) or 0.0))
    full_ahead = queued // max_batch
    if full_ahead:
        t += full_ahead * (model.predict(max_batch) or 0.0)
    return t + own
