"""Instruction snapping: an instruction the policy never trained on is replaced by the trained one nearest in meaning.

A policy fine-tuned on a few sentences per task follows those sentences, and a paraphrase lands near them in the
frozen encoder's space but not on them, and success on paraphrases drops. The checkpoint
records the instructions it trained on, so the runner can compare sentence embeddings (mean of the encoder's token
features, cosine similarity) and hand the policy the trained sentence when the match is close enough. Below the
threshold the instruction passes through unchanged: an unrelated request is never silently turned into a task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Encode = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]  # -> features (B, L, D) f32, mask (B, L) bool


def sentence_embeddings(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, L, D) token features + (B, L) mask -> (B, D) unit vectors: masked mean pooling, as sentence encoders do."""
    m = mask.astype(np.float32)[..., None]
    pooled = (features * m).sum(1) / np.maximum(m.sum(1), 1.0)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Match:
    """What an instruction was matched to: the trained sentence, its cosine similarity, and whether it was used."""

    instruction: str
    nearest: str
    similarity: float
    snapped: bool


class InstructionSnapper:
    """instructions -> the same list with each close paraphrase replaced by its nearest trained instruction."""

    def __init__(self, trained: Sequence[str], encode: Encode, threshold: float, cache_size: int = 4096) -> None:
        if not trained:
            raise ValueError("instruction snapping needs the instructions the policy trained on; this model records "
                             "none (checkpoint config.json meta.data.tasks, or export.json trained_instructions)")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"snap threshold={threshold}: a cosine similarity, expected -1..1 (e.g. 0.5)")
        self.trained, self.threshold, self.encode = list(dict.fromkeys(trained)), float(threshold), encode
        self.embeddings = sentence_embeddings(*encode(self.trained))  # (K, D)
        self.match = lru_cache(maxsize=cache_size)(self._match)  # a fleet repeats a handful of instructions

    def _match(self, instruction: str) -> Match:
        """The nearest trained instruction and whether it is close enough to use (`match` caches it)."""
        if instruction in self.trained:
            return Match(instruction, instruction, 1.0, False)
        sims = self.embeddings @ sentence_embeddings(*self.encode([instruction]))[0]
        k = int(np.argmax(sims))
        return Match(instruction, self.trained[k], float(sims[k]), bool(sims[k] >= self.threshold))

    def __call__(self, instructions: Sequence[str]) -> list[str]:
        return [m.nearest if m.snapped else m.instruction for m in map(self.match, instructions)]

    def describe(self) -> dict:
        return {"threshold": self.threshold, "trained_instructions": self.trained}
