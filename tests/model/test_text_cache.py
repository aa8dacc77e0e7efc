"""The instruction cache: each instruction encoded once, in a memory bound (a fleet where every robot sends its own
instruction took a server 165 MB at 4,096 entries)."""

from __future__ import annotations

import numpy as np

from rfm.model.text_cache import MAX_BYTES, InstructionCache


def test_the_cache_encodes_each_instruction_once_and_holds_at_most_its_bytes():
    encoded = []

    def encode(texts):
        encoded.extend(texts)
        return [(np.full((24, 384), len(t), np.float32), np.arange(24) < len(t.split())) for t in texts]

    cache = InstructionCache(24, 384)
    assert cache.size * 24 * (4 * 384 + 1) <= MAX_BYTES and cache.size > 800  # ~900 of the default encoder's
    feats, mask = cache.encode(["pick the cube", "open", "pick the cube"], encode)
    assert encoded == ["pick the cube", "open"] and feats.shape == (3, 24, 384)
    assert feats[0, 0, 0] == feats[2, 0, 0] == 13 and mask[1].sum() == 1
    for i in range(cache.size + 10):  # a fleet of robots each with its own instruction
        cache.encode([f"robot {i}"], encode)
    assert len(cache._cache) == cache.size and cache.misses == 2 + cache.size + 10 and cache.hits == 0
    cache.encode(["open"], encode)  # evicted long ago: encoded again
    assert encoded.count("open") == 2 and InstructionCache(24, 384, size=3).size == 3
