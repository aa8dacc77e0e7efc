"""Instruction augmentation: variants replace instructions at the configured rate, never leak eval paraphrases,
and a table that does not fit the dataset is a clear error."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rfm.config import ConfigError
from rfm.sim.instructions import INSTRUCTIONS, TRAINING_VARIANTS, training_variants
from rfm.train.instructions import InstructionVariator, check_coverage, check_task_tokens, load_variants


def test_variator_replaces_at_the_configured_rate_and_keeps_unknown_instructions():
    table = {"open the drawer": ["pull the drawer open", "draw the drawer out"]}
    batch = ["open the drawer"] * 2000 + ["close the door"] * 10
    out = InstructionVariator(table, prob=0.5, seed=0)(batch)
    counts = Counter(out[:2000])
    assert 900 < 2000 - counts["open the drawer"] < 1100  # about half replaced
    assert set(counts) == {"open the drawer", "pull the drawer open", "draw the drawer out"}
    assert out[2000:] == ["close the door"] * 10  # no variants: unchanged
    assert InstructionVariator(table, prob=0.0)(batch) == batch
    assert InstructionVariator(table, prob=0.3, seed=7)(batch) == InstructionVariator(table, prob=0.3, seed=7)(batch)
    numbered = InstructionVariator(table, prob=0.5, seed=7)
    runs = [numbered(batch, i) for i in range(6)]
    assert [numbered(batch, i) for i in reversed(range(6))] == runs[::-1]  # batch i varies alike, whatever came before
    assert len({tuple(r) for r in runs}) > 1


def test_builtin_variants_never_contain_an_evaluation_paraphrase():
    assert set(TRAINING_VARIANTS) == set(INSTRUCTIONS)
    for task, variants in TRAINING_VARIANTS.items():
        assert len(variants) >= 3 and not set(variants) & set(INSTRUCTIONS[task]), task
    table = load_variants("metaworld")
    assert table == training_variants() and "reach the red target" in table


def test_a_table_that_fits_no_instruction_or_is_malformed_is_named(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"fold the towel": ["fold the cloth"]}))
    with pytest.raises(ConfigError, match="other.json: none of the dataset's instructions"):
        check_coverage(load_variants(str(other)), ["open the drawer"], str(other))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"open the drawer": "pull it"}))
    with pytest.raises(ConfigError, match="bad.json: expected an object"):
        load_variants(str(bad))
    with pytest.raises(ConfigError, match="missing.json is neither"):
        load_variants(str(tmp_path / "missing.json"))


def test_tasks_the_text_encoder_cuts_into_one_are_an_error_that_says_what_to_do():
    """Two tasks differing only after the 24th token were one instruction to the model, trained and served without
    a word (a dataset in the wild: '... place it gently into the blue bin' / '... green bin')."""
    from rfm.model.text import DEFAULT_TEXT_ENCODER, resolve_text_encoder
    from rfm.model.tokenizer import FastTokenizer

    tokenize = FastTokenizer(resolve_text_encoder(DEFAULT_TEXT_ENCODER), 24)
    long = "pick up the small red cube from the left side of the table, lift it over the cardboard obstacle and " \
           "place it gently into the {} bin"
    tasks = [long.format("blue"), long.format("green")] * 3
    with pytest.raises(ConfigError, match=r"data/x: the tasks .* same in their first 24 tokens.*text_max_tokens"):
        check_task_tokens(tokenize, tasks, 24, "data/x")
    check_task_tokens(FastTokenizer(resolve_text_encoder(DEFAULT_TEXT_ENCODER), 64), tasks, 64, "data/x")  # fits
    check_task_tokens(tokenize, ["Pick the cube", "pick the cube", "open the drawer"], 24, "data/x")  # short: alike
