"""rfm.processes: work in spawned processes fails at once, with a clear error, when a worker dies."""

from __future__ import annotations

import os
import time

import pytest

from rfm.processes import Processes, WorkerDied, process_map


def _square_or_die(x: int) -> int:
    if x == 3:
        os._exit(9)  # as the out-of-memory killer or a crashing renderer would end it
    return x * x


def test_results_come_in_order():
    assert process_map(_square_or_die, [0, 1, 2, 4], workers=2) == [0, 1, 4, 16]


def test_a_dead_worker_is_an_error_not_a_hang():
    """multiprocessing.Pool, used before, waited forever for the dead worker's result."""
    t = time.monotonic()
    with Processes(2) as pool, pytest.raises(WorkerDied, match=r"a worker process died .* \(workers=2\)"):
        list(pool.map(_square_or_die, range(6)))
    assert time.monotonic() - t < 60


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_an_interrupted_map_does_not_wait_for_the_workers():
    """Ctrl-C (or any error) in the parent kills the workers instead of waiting for their shards to finish."""
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt), Processes(2) as pool:  # the interrupt arrives mid-map
        for _ in pool.map(_sleep, [0.1, 60, 60]):
            raise KeyboardInterrupt
    assert time.monotonic() - t < 30
