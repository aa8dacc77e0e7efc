"""Thread-safe LRU of instruction features, shared by the torch text encoder and the ONNX runner (no torch here).

A fleet repeats a handful of instructions: each is encoded once per process, then served from this cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from threading import Lock

import numpy as np

Features = tuple[np.ndarray, np.ndarray]  # ((L, D_text) float32, (L,) bool) for one instruction


MAX_BYTES = 32 << 20  # a fleet's instructions, not a memory sink: 909 of 24 tokens x 384 dims


class InstructionCache:
    """encode(texts, encode_missing) -> (features (B, L, D) f32, mask (B, L) bool), encoding only cache misses.

    Holds `size` instructions, by default as many as fit in MAX_BYTES: 4,096 of them took a server 165 MB when
    each robot sent its own instruction."""

    def __init__(self, max_tokens: int, dim: int, size: int | None = None) -> None:
        self.max_tokens, self.dim = max_tokens, dim
        self.size = size if size is not None else max(16, MAX_BYTES // (max_tokens * (4 * dim + 1)))
        self._cache: OrderedDict[str, Features] = OrderedDict()
        self._lock = Lock()
        self.hits = self.misses = 0

    def encode(self, texts: list[str], encode_missing: Callable[[list[str]], list[Features]]
               ) -> tuple[np.ndarray, np.ndarray]:
        found: dict[str, Features] = {}
        with self._lock:
            for t in dict.fromkeys(texts):
                if t in self._cache:
                    self._cache.move_to_end(t)
                    found[t] = self._cache[t]
                    self.hits += 1
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            new = encode_missing(missing)  # outside the lock: encoding is the slow part
            with self._lock:
                self.misses += len(missing)
                for t, fm in zip(missing, new):
                    self._cache[t] = fm
                    if len(self._cache) > self.size:
                        self._cache.popitem(last=False)
            found.update(zip(missing, new))
        feats = np.zeros((len(texts), self.max_tokens, self.dim), np.float32)
        mask = np.zeros((len(texts), self.max_tokens), bool)
        for i, t in enumerate(texts):
            feats[i], mask[i] = found[t]
        return feats, mask


class CachedTextEncoder:
    """Base of the text encoders that keep an InstructionCache in `self.cache`: its hit/miss counters."""

    cache: InstructionCache

    @property
    def hits(self) -> int:
        return self.cache.hits

    @property
    def misses(self) -> int:
        return self.cache.misses
