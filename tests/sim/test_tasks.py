"""Meta-World's 50 v3 tasks: instructions for each, the named task sets, a scripted expert for each."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.sim.instructions import INSTRUCTIONS, TRAINING_VARIANTS, instructions_for
from rfm.sim.metaworld import BASE38_TASKS, ML45_TEST_TASKS, MT10_TASKS, expand_tasks, task_sets


def _v3_tasks() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def test_every_v3_task_has_a_training_sentence_and_three_held_out_paraphrases():
    assert len(_v3_tasks()) == 50 and set(INSTRUCTIONS) == set(_v3_tasks())
    training = [instructions_for(t)[0] for t in _v3_tasks()]
    assert len(set(training)) == 50  # no two tasks share an instruction
    for task in _v3_tasks():
        para = instructions_for(task, paraphrase=True)
        assert len(para) == 3 and len(set(para)) == 3
        assert not set(para) & set(training), task  # a held-out paraphrase is never any task's training sentence
        assert all(s == s.strip() and s and s[0].islower() and not s.endswith(".") for s in INSTRUCTIONS[task])
    variants = {v for vs in TRAINING_VARIANTS.values() for v in vs}
    assert not variants & {p for t in _v3_tasks() for p in instructions_for(t, paraphrase=True)}


def test_task_sets_are_the_issues_lists():
    from metaworld.env_dict import ML45_V3

    assert len(BASE38_TASKS) == 38 == len(set(BASE38_TASKS)) and set(BASE38_TASKS) <= set(_v3_tasks())
    assert ML45_TEST_TASKS == sorted(ML45_V3["test"])
    held_out = {"coffee-button-v3", "faucet-open-v3", "hammer-v3", "handle-press-v3", "pick-out-of-hole-v3",
                "plate-slide-v3", "sweep-into-v3"}
    assert set(BASE38_TASKS) == set(ML45_V3["train"]) - held_out  # no ML45 test task in the base's data
    assert set(MT10_TASKS) <= set(BASE38_TASKS)


def test_expand_tasks_knows_the_sets_in_any_case_and_suggests_names():
    assert expand_tasks("base38") == BASE38_TASKS and expand_tasks("ML45-Test") == ML45_TEST_TASKS
    assert expand_tasks("MT50") == _v3_tasks() and expand_tasks(["mt10"]) == MT10_TASKS
    assert expand_tasks("door-lock-v3,ml45-test") == ML45_TEST_TASKS[2:3] + ML45_TEST_TASKS[:2] + ML45_TEST_TASKS[3:]
    assert set(task_sets()) == {"mt10", "base38", "ml45-test", "mt50"}
    task_sets()["mt10"].clear()  # callers get copies
    assert len(MT10_TASKS) == 10
    with pytest.raises(ValueError, match="Did you mean 'door-lock-v3'"):
        expand_tasks("door-lok-v3")
    with pytest.raises(ValueError, match="Did you mean 'ml45-test'"):
        expand_tasks("ml45test")


def test_every_v3_task_has_a_scripted_expert():
    from metaworld.policies import ENV_POLICY_MAP

    assert set(_v3_tasks()) <= set(ENV_POLICY_MAP)


@pytest.mark.integration
@pytest.mark.parametrize("task", ML45_TEST_TASKS)
def test_the_expert_drives_each_ml45_test_task(task):
    from rfm.sim.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, ["topview"], size=16)
    try:
        obs = env.reset(0)
        assert obs["instruction"] == INSTRUCTIONS[task][0]
        start = obs["state"].copy()
        for _ in range(10):
            action = env.expert_action()
            assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
            obs, _, _, _ = env.step(action)
        assert np.abs(obs["state"][:3] - start[:3]).max() > 1e-3  # the hand moved under the expert
    finally:
        env.close()
