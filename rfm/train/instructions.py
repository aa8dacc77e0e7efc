"""Instruction augmentation: train on several phrasings of each task, so new wordings land near a trained one.

A dataset usually carries one sentence per task. With a frozen text encoder the policy then learns that one point
of the sentence-embedding space, and a paraphrase at evaluation (or from a user) can fall outside what it learned.
Replacing each sample's instruction, with some probability, by one of its variants teaches a neighbourhood instead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from rfm.config import ConfigError
from rfm.train.aids import load_plugins

_TABLES: dict[str, Callable[[], dict[str, list[str]]]] = {}  # named variant tables, registered by plug-ins


def register_variants(name: str, table: Callable[[], dict[str, list[str]]]) -> None:
    """Make a built-in table of {instruction: [variants]} available as train.instruction_variants=name."""
    _TABLES[name] = table


def load_variants(source: str) -> dict[str, list[str]]:
    """{instruction: [variants]} from a JSON file, or a registered table (e.g. "metaworld", from rfm.sim)."""
    path = Path(source)
    if not path.is_file():
        load_plugins()
        if source in _TABLES:
            return _TABLES[source]()
        raise ConfigError(f"train.instruction_variants: {source} is neither a JSON file nor a registered table "
                          f"({', '.join(sorted(_TABLES)) or 'none registered'})")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v)
            for k, v in table.items()):
        raise ConfigError(f"{source}: expected an object mapping each instruction to a list of non-empty strings")
    return {k: list(v) for k, v in table.items()}


def check_coverage(variants: dict[str, list[str]], tasks: list[str], source: str) -> None:
    """An error if none of the dataset's instructions has variants (the table was meant for other data)."""
    if not any(variants.get(t) for t in tasks):
        raise ConfigError(f"train.instruction_variants={source}: none of the dataset's instructions has variants "
                          f"(dataset instructions: {tasks[:5]}{' ...' if len(tasks) > 5 else ''})")


def check_task_tokens(tokenize, tasks: list[str], max_tokens: int, source: str) -> None:
    """An error where the text encoder's cut at `max_tokens` makes distinct tasks one ("... into the blue bin" and
    "... into the green bin" differing after token 24): the policy could not tell them apart, and nothing said so."""
    distinct = list(dict.fromkeys(tasks))
    if len(distinct) < 2:
        return
    tok = tokenize(distinct)
    ids, full = tok["input_ids"], tok["attention_mask"].all(axis=1)  # full: filled every token, maybe cut
    seen: dict[bytes, str] = {}
    for text, row, cut in zip(distinct, ids, full):
        other = seen.setdefault(row.tobytes(), text)
        if other is not text and cut:
            raise ConfigError(
                f"{source}: the tasks {other!r} and {text!r} are the same in their first {max_tokens} tokens, where "
                f"the text encoder cuts instructions (model.text_max_tokens): the model could not tell them apart. "
                f"Make them differ earlier, or give the model more tokens (rfm train --model "
                f"'{{\"text_max_tokens\": 64}}'; fine-tuned from a checkpoint of {max_tokens}, its token positions "
                f"start afresh)")


class InstructionVariator:
    """Replaces each instruction of a batch by one of its variants with probability `prob` (seeded).

    Given the batch's number (`batch_index`), the choice depends on (seed, batch_index) alone, so a resumed run
    varies its batches as the run would have had it not been stopped.
    """

    def __init__(self, variants: dict[str, list[str]], prob: float, seed: int = 0) -> None:
        self.variants = variants
        self.prob = prob
        self.seed = seed
        self.rng = random.Random(seed)

    def __call__(self, instructions: list[str], batch_index: int | None = None) -> list[str]:
        rng = self.rng if batch_index is None else random.Random(self.seed * 1_000_003 + batch_index)
        out = []
        for text in instructions:
            options = self.variants.get(text)
            out.append(rng.choice(options) if options and rng.random() < self.prob else text)
        return out


__all__ = ["InstructionVariator", "check_coverage", "check_task_tokens", "load_variants", "register_variants"]
