"""Admission by deadline: refuse at once a request the server cannot answer before its deadline.

Queueing a request that will miss its deadline only makes it fail later and delays the ones behind it. The batcher
asks `BatchCostModel` how long the work ahead of a new request takes (the running batch's remainder plus the full
batches queued before it) and how long the request's own batch takes; if that ends after the deadline the request is
refused with 503 + Retry-After, so the requests the server accepts keep their latency under overload.

A request's own batch is not only the requests queued ahead of it: everything that arrives before that batch starts
joins it (up to the batch limit), and a bigger batch takes longer. `ArrivalRate` measures the recent request rate so
the estimate counts them; without it, under overload with batching, admitted requests missed their deadlines.
"""

from __future__ import annotations

import math
import threading
from collections import deque

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
    """Seconds per batch as a + c * batch_size, fitted to each batch size's recent cost.

    Inference on a CPU grows about linearly with the batch. Each size keeps a running average that moves half way
    to a slower batch (a neighbour taking the cores is believed within a batch or two) and a tenth of the way to a
    faster one (one quick batch does not talk the server into promises), so under doubt it refuses rather than
    lets a request miss its deadline. Before any batch is seen it predicts nothing (admit everything).
    """

    def __init__(self, up: float = 0.5, down: float = 0.1) -> None:
        self.up, self.down = up, down
        self._avg: dict[int, float] = {}  # batch size -> running average of its seconds
        self._fit: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def observe(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            old = self._avg.get(batch_size)
            if old is None:
                self._avg[batch_size] = seconds
            else:
                self._avg[batch_size] = old + (self.up if seconds > old else self.down) * (seconds - old)
            self._fit = None

    def predict(self, batch_size: int) -> float | None:
        """Expected seconds for a batch of `batch_size`; None before the first observation."""
        with self._lock:
            if not self._avg:
                return None
            if self._fit is None:
                sizes = np.array(sorted(self._avg), float)
                secs = np.array([self._avg[int(b)] for b in sizes])
                if len(sizes) == 1:  # one point: proportional to the batch
                    self._fit = (0.0, secs[0] / sizes[0])
                else:
                    c, a = np.polyfit(sizes, secs, 1)
                    self._fit = (max(a, 0.0), max(c, 1e-6))
            a, c = self._fit
            if batch_size in self._avg:
                return self._avg[batch_size]
            return a + c * batch_size


class ArrivalRate:
    """Requests per second over the last `window_s` seconds (submissions, admitted or not)."""

    def __init__(self, window_s: float = 1.0, max_events: int = 4096) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=max_events)

    def add(self, t: float) -> None:
        self._times.append(t)

    def rate(self, now: float) -> float:
        times = self._times
        while times and times[0] < now - self.window_s:
            times.popleft()
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(now - times[0], 1e-3)


BATCH_GAIN = 1.5  # --batching auto: a batch must serve its requests this much faster than one at a time


def batch_gain(costs: dict[int, float]) -> tuple[float, int] | None:
    """(gain, B): how much faster per request the best warmed batch size B runs than batch 1, B x cost(1) /
    cost(B); None without batch 1 and a larger size. On a CPU a batch of a conv encoder costs about B batch-1 runs
    (gain ~1); on an accelerator a batch costs little more than one request."""
    one = costs.get(1)
    sizes = [b for b in costs if b > 1 and costs[b] > 0]
    if not one or not sizes:
        return None
    best = max(sizes, key=lambda b: b * one / costs[b])
    return best * one / costs[best], best


def expected_finish(model: BatchCostModel, now: float, running: tuple[float, int] | None, queued: int,
                    max_batch: int, arrivals_per_s: float = 0.0) -> float | None:
    """When a request submitted now would finish: the running batch's rest, the full batches queued ahead of it,
    then its own batch: the requests left at its position plus those arriving (at `arrivals_per_s`) before it
    starts, up to max_batch. None when the model has no data yet."""
    if model.predict(1) is None:
        return None
    t = now
    if running is not None:
        started, size = running
        t = max(now, started + (model.predict(size) or 0.0))
    full_ahead = queued // max_batch
    if full_ahead:
        t += full_ahead * (model.predict(max_batch) or 0.0)
    joining = int(arrivals_per_s * (t - now))
    own = model.predict(min(max_batch, queued % max_batch + 1 + joining))
    return t + (own or 0.0)
