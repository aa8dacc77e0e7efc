"""Work spread over spawned processes that fails loudly when one of them dies.

multiprocessing.Pool replaces a worker killed mid-task (the OOM killer, a crashing renderer) and waits forever for
the result it was computing: an overnight evaluation would hang without a word. A ProcessPoolExecutor notices.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (killed, or crashed in native code) while it held work."""


class Processes:
    """`workers` spawned processes, reused across `map` calls; `with Processes(n) as p: p.map(fn, items)`."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """fn over items, results in order as they come; WorkerDied when a worker dies."""
        try:
            yield from self._pool.map(fn, items)
        except BrokenProcessPool:
            raise WorkerDied(f"a worker process died while it held work (killed, e.g. by the out-of-memory killer, "
                             f"or crashed in native code); rerun, with fewer workers if memory ran out "
                             f"(workers={self.workers})") from None

    def close(self) -> None:
        """Wait for the work running, drop the rest."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        """Stop now (Ctrl-C, an error): the workers are killed rather than left to finish their shards."""
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(5)

    def __enter__(self) -> Processes:  # noqa: PYI034
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.terminate() if exc_type is not None else self.close()


def process_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """fn over items in `workers` spawned processes, results in order; WorkerDied when a worker dies."""
    with Processes(workers) as pool:
        return list(pool.map(fn, items))
