"""Batcher unit behaviour with a plain numpy predict function (no server, no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.batcher import Batcher, BatchFailed, DeadlineExceeded, QueueFull, ShuttingDown


def echo(batch):
    """actions (B, 2, 1): each request gets its own state[0] back, so routing is checkable."""
    time.sleep(0.02)
    return np.repeat(batch.state[:, None, :1], 2, axis=1)


def submit(b: Batcher, i: float, timeout: float = 5.0):
    return b.submit(np.zeros((1, 3, 4, 4), np.uint8), np.array([i, 0.0], np.float32), "x", timeout)


def test_batches_fill_up_to_max_batch_and_route_results():
    sizes = []
    b = Batcher(echo, max_batch=4, max_wait_ms=50, on_batch=lambda n, s: sizes.append(n))

    async def main():
        futs = [submit(b, i) for i in range(10)]
        return await asyncio.gather(*futs)

    results = asyncio.run(main())
    b.close()
    assert [float(r.actions[0, 0]) for r in results] == list(range(10))
    assert sizes == [4, 4, 2] and all(r.batch_size in (4, 2) for r in results)


def test_max_batch_one_turns_batching_off():
    b = Batcher(echo, max_batch=1, max_wait_ms=50)

    async def main():
        return await asyncio.gather(*[submit(b, i) for i in range(3)])

    assert [r.batch_size for r in asyncio.run(main())] == [1, 1, 1]
    b.close()


def test_lone_request_on_quiet_server_does_not_wait():
    b = Batcher(lambda batch: np.zeros((len(batch), 1, 1), np.float32), max_batch=8, max_wait_ms=200)

    async def main():
        t = time.perf_counter()
        await submit(b, 0)
        return time.perf_counter() - t

    assert asyncio.run(main()) < 0.15
    b.close()


def test_failure_fails_only_its_batch_and_the_loop_goes_on():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise ValueError("boom")
        return np.zeros((len(batch), 1, 1), np.float32)

    b = Batcher(flaky, max_batch=2, max_wait_ms=1)

    async def main():
        with pytest.raises(BatchFailed, match=r"inference failed for this batch \(ValueError\)"):
            await submit(b, 0)
        return await submit(b, 1)

    assert asyncio.run(main()).actions.shape == (1, 1)
    b.close()


def test_queue_bound_deadline_and_shutdown():
    gate = threading.Event()

    def blocked(batch):
        gate.wait(5)
        return np.zeros((len(batch), 1, 1), np.float32)

    b = Batcher(blocked, max_batch=1, max_wait_ms=0, queue_size=2)

    async def main():
        first = submit(b, 0)
        await asyncio.sleep(0.05)  # the worker holds the first one
        queued = [submit(b, 1, timeout=0.01), submit(b, 2)]
        with pytest.raises(QueueFull, match="limit 2"):
            submit(b, 3)
        await asyncio.sleep(0.05)
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="past its deadline"):
            await queued[0]
        await queued[1]
        b.close()
        with pytest.raises(ShuttingDown):
            submit(b, 4)

    asyncio.run(main())


def test_on_idle_runs_when_the_queue_drains():
    idle = threading.Event()
    b = Batcher(lambda batch: np.zeros((len(batch), 1, 1), np.float32), max_batch=4, on_idle=idle.set)

    async def main():
        await submit(b, 0)

    asyncio.run(main())
    assert idle.wait(2)
    b.close()


def test_a_request_that_breaks_inference_fails_alone():
    """One request the checks did not foresee (a lone surrogate in an instruction broke the tokenizer) failed every
    robot batched with it. A failed batch is run again one request at a time."""
    def picky(batch):
        if "poison" in batch.instructions:
            raise TypeError("cannot tokenize")
        return np.zeros((len(batch), 1, 1), np.float32)

    b = Batcher(picky, max_batch=4, max_wait_ms=50)

    async def main():
        futs = [b.submit(np.zeros((1, 3, 4, 4), np.uint8), np.zeros(2, np.float32), text, 5.0)
                for text in ("ok", "poison", "ok", "ok")]
        return await asyncio.gather(*futs, return_exceptions=True)

    out = asyncio.run(main())
    assert [type(r).__name__ for r in out] == ["BatchResult", "BatchFailed", "BatchResult", "BatchResult"]
    b.close()
