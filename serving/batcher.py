"""Dynamic batching: requests from the event loop are grouped and run on the runner in one worker thread.

The worker takes up to `max_batch` queued requests, waiting at most `max_wait_ms` after the oldest one arrived,
drops requests whose deadline has passed, runs `runner.predict_batch` once, and resolves each request's asyncio
future with `loop.call_soon_threadsafe`. A failing batch fails only its own requests; the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rfm.runtime.observation import Batch, stack_committed
from serving.admission import ArrivalRate, BatchCostModel, WouldMissDeadline, expected_finish

log = logging.getLogger("rfm.serving")


class QueueFull(Exception):
    """The queue holds `queue_size` requests already; the client should retry later (503)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before inference started (504)."""


class BatchFailed(Exception):
    """The batch this request ran in raised; the message is short and safe to send to a client (500)."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work (503)."""


@dataclass
class BatchResult:
    """What one request gets back from the worker."""

    actions: np.ndarray  # (H, D_a) float32
    batch_size: int
    queue_ms: float  # arrival in the queue -> start of its batch
    inference_ms: float  # runtime of the whole batch


@dataclass
class _Item:
    images: np.ndarray  # (N_cam, 3, H, W) uint8, already validated
    state: np.ndarray  # (D_s,) float32, already validated
    instruction: str
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float  # time.perf_counter() at submit
    deadline: float  # time.perf_counter() after which the request is dropped
    committed: np.ndarray | None = None  # (P, D_a) float32 committed actions, already validated; None: none


def _resolve(fut: asyncio.Future, result: object = None, error: BaseException | None = None) -> None:
    if fut.done():  # the handler gave up (timeout, client gone)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Batcher:
    """One bounded queue, one worker thread, one runner call per batch."""

    def __init__(self, predict: Callable[[Batch], np.ndarray], max_batch: int = 32, max_wait_ms: float = 2.0,
                 queue_size: int = 256, on_batch: Callable[[int, float], None] | None = None,
                 on_idle: Callable[[], None] | None = None, idle_s: float = 1.0, prefix_max: int = 0,
                 action_dim: int = 0) -> None:
        """`predict`: Batch -> actions (B, H, D_a); `on_batch(batch_size, seconds)` is called after each batch,
        `on_idle()` when a batch is done and nothing is queued, and every `idle_s` while idle (housekeeping
        off the hot path). `prefix_max`, `action_dim`: the runner's, for the Batch's committed actions (requests
        with and without them share a batch)."""
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000.0
        self.prefix_max, self.action_dim = prefix_max, action_dim
        self.queue_size, self.on_batch, self.on_idle, self.idle_s = queue_size, on_batch, on_idle, idle_s
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._company = False  # did the previous batch have company (size > 1, or requests queued meanwhile)?
        self.solo = False  # one request per run, taken at once: batching does not pay on this engine (or is off)
        self.cost = BatchCostModel()  # seconds per batch size, for admission by deadline
        self.arrivals = ArrivalRate()  # requests joining a batch before it starts make it slower
        self._running: tuple[float, int] | None = None  # (start, size) of the batch being run
        self._thread = threading.Thread(target=self._run, name="rfm-batcher", daemon=True)
        self._thread.start()

    # --- event-loop side -------------------------------------------------------------------------------------
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the one running)."""
        return len(self._queue)

    def submit(self, images: np.ndarray, state: np.ndarray, instruction: str, timeout_s: float,
               committed: np.ndarray | None = None) -> asyncio.Future:
        """Queue one validated request (`committed`: its (P, D_a) committed actions, P <= prefix_max, or None);
        returns a future of BatchResult.

        Raises QueueFull, ShuttingDown, or WouldMissDeadline when the work ahead of it (by the batch cost model)
        would not let it finish within `timeout_s`.
        """
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        item = _Item(images, state, instruction, loop.create_future(), loop, now, now + timeout_s, committed)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"{len(self._queue)} requests are queued (limit {self.queue_size})")
            # an idle server always admits: refusing there would teach the cost model nothing, and a stale
            # estimate (one slow batch) would refuse every later request
            idle = not self._queue and self._running is None
            self.arrivals.add(now)
            finish = None if idle else expected_finish(self.cost, now, self._running, len(self._queue),
                                                       1 if self.solo else self.max_batch, self.arrivals.rate(now))
            if finish is not None and finish > item.deadline:
                raise WouldMissDeadline(
                    f"the server expects to answer in {1000 * (finish - now):.0f} ms ({len(self._queue)} requests "
                    f"queued), after this request's deadline of {1000 * timeout_s:.0f} ms",
                    retry_after_s=finish - now)
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking work; finish what is queued (up to drain_timeout_s), then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(drain_timeout_s)
        with self._cond:  # anything left after the drain timeout fails cleanly
            while self._queue:
                item = self._queue.popleft()
                item.loop.call_soon_threadsafe(_resolve, item.future, None, ShuttingDown("server shut down"))

    # --- worker thread ---------------------------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:  # None: closing; []: idle
        """Block for the next batch: up to max_batch items, at most max_wait after the oldest arrived.

        A lone request on a quiet server (the last batch was alone and nothing queued while it ran: one robot)
        runs at once, since waiting would only add latency; otherwise it waits for company.
        """
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                if not self._cond.wait(self.idle_s) and self.on_idle is not None:
                    return []  # idle for idle_s: the caller runs on_idle outside the lock
            if self.solo:  # no company to wait for: the oldest runs alone, at once
                return [self._queue.popleft()]
            wait = self.max_wait if (self._company or len(self._queue) > 1) else 0.0
            until = self._queue[0].enqueued + wait
            while len(self._queue) < self.max_batch and not self._closing:
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.max_batch, len(self._queue))
            self._company = n > 1
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        busy_since: tuple[float, int] | None = None  # (start, size) of the last batch, when work waited behind it
        while True:
            items = self._take()
            if items is None:
                return
            if not items:
                busy_since = None
                self._idle()
                continue
            now = time.perf_counter()
            live = []
            for it in items:
                if now > it.deadline:
                    it.loop.call_soon_threadsafe(_resolve, it.future, None, DeadlineExceeded(
                        f"request waited {1000 * (now - it.enqueued):.0f} ms in the queue, past its deadline"))
                elif not it.future.done():  # skip requests whose client already gave up
                    live.append(it)
            if busy_since is not None:  # the last batch's whole cycle, start to this start, while work waited
                self.cost.observe(busy_since[1], now - busy_since[0])
            seconds = self._run_batch(live, now) if live else None
            with self._cond:
                self._company = self._company or bool(self._queue)
                idle = not self._queue
            # under load a batch costs its start-to-next-start cycle (handing results back, the event loop's share of
            # the CPU) rather than its inference alone: observed at the next start; idle, its inference time
            busy_since = (now, len(live)) if seconds is not None and not idle else None
            if seconds is not None and idle:
                self.cost.observe(len(live), seconds)
            if idle:
                self._idle()

    def _idle(self) -> None:
        if self.on_idle is not None:
            try:
                self.on_idle()
            except Exception:  # housekeeping must never stop the worker
                log.exception("on_idle callback failed")

    def _predict(self, items: list[_Item]) -> np.ndarray:
        prefix, prefix_len = stack_committed([it.committed for it in items], self.prefix_max, self.action_dim)
        batch = Batch(np.stack([it.images for it in items]), np.stack([it.state for it in items]),
                      [it.instruction for it in items], prefix, prefix_len)
        actions = self.predict(batch)
        if actions.shape[0] != len(items):
            raise RuntimeError(f"runner returned {actions.shape[0]} action chunks for a batch of {len(items)}")
        return actions

    def _run_batch(self, items: list[_Item], start: float) -> float | None:
        """Run one batch and resolve its futures; its inference seconds, or None when it failed. A failed batch of
        several is run again one request at a time, so a request that breaks inference (one the checks did not
        foresee) fails alone instead of taking the robots batched with it down too."""
        self._running = (start, len(items))
        try:
            actions = self._predict(items)
        except Exception as e:  # one bad batch must not stop the server
            log.exception("batch of %d failed%s", len(items), "; running its requests one by one" if len(items) > 1
                          else "")
            if len(items) > 1:
                for it in items:
                    self._run_batch([it], time.perf_counter())
                return None
            err = BatchFailed(f"inference failed for this batch ({type(e).__name__})")
            for it in items:
                it.loop.call_soon_threadsafe(_resolve, it.future, None, err)
            return None
        finally:
            self._running = None
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            try:
                self.on_batch(len(items), seconds)
            except Exception:  # metrics must never break inference
                log.exception("on_batch callback failed")
        for i, it in enumerate(items):
            res = BatchResult(actions[i], len(items), 1000 * (start - it.enqueued), 1000 * seconds)
            it.loop.call_soon_threadsafe(_resolve, it.future, res)
        return seconds
