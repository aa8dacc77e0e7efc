"""Executing action chunks: plain chunking (execute n, re-plan) and ACT-style temporal ensembling."""

from __future__ import annotations

import numpy as np


class TemporalEnsembler:
    """Average every chunk prediction that covers the current step, weighted exp(-m * i), i = 0 for the oldest.

    Predict a new chunk every step and call `update(chunk)`; it returns the action to execute now.
    """

    def __init__(self, m: float = 0.01) -> None:
        self.m = m
        self.reset()

    def reset(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step predicted at, chunk (H, D_a))
        self.t = 0

    def update(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, np.float32)
        self._chunks.append((self.t, chunk))
        self._chunks = [(t0, c) for t0, c in self._chunks if self.t - t0 < len(c)]  # drop chunks that ended
        preds = np.stack([c[self.t - t0] for t0, c in self._chunks])  # oldest first
        w = np.exp(-self.m * np.arange(len(preds)))
        self.t += 1
        return (w[:, None] * preds).sum(0) / w.sum()


class ChunkQueue:
    """Execute the first `n` actions of each chunk, then ask for a new one."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self._queue: list[np.ndarray] = []

    def reset(self) -> None:
        self._queue = []

    def needs_chunk(self) -> bool:
        return not self._queue

    def push(self, chunk: np.ndarray) -> None:
        n = len(chunk) if self.n is None else min(self.n, len(chunk))
        self._queue = list(np.asarray(chunk, np.float32)[:n])

    def pop(self) -> np.ndarray:
        return self._queue.pop(0)
