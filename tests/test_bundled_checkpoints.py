"""The checkpoints shipped in checkpoints/: they load, their cards describe these weights, and checkpoints/base was
trained on the 38 pretraining tasks and no other (its data, its init and the init's lineage, as its card records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rfm.sim.metaworld import BASE38_TASKS, ML45_TEST_TASKS
from rfm.sim.task_check import check_tasks

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("name", ["default", "base"])
def test_a_bundled_checkpoint_loads_and_its_card_names_its_weights(name):
    from rfm import RFMPolicy

    path = ROOT / name
    meta = json.loads((path / "config.json").read_text())["meta"]
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:12] == meta["model_version"]
    assert meta["model_version"] in (path / "README.md").read_text()
    assert sum(f.stat().st_size for f in path.iterdir()) < 30e6
    policy = RFMPolicy.from_pretrained(path)
    assert policy.interface.cameras == ["corner", "topview"] and policy.interface.action_dim == 4


def test_the_base_holds_the_38_pretraining_tasks_and_none_of_the_held_out_five():
    meta = json.loads((ROOT / "base" / "config.json").read_text())["meta"]
    check = meta["data"]["task_check"]
    assert check["passed"] and check["allowed"] == BASE38_TASKS and check["missing"] == []
    covered = {t for d in check["datasets"] for t in d["env_tasks"]}
    assert covered == set(BASE38_TASKS) and not covered & set(ML45_TEST_TASKS)
    assert any(d.get("checkpoint") for d in check["datasets"])  # the init it continued from was checked too
    # re-checked from the card alone: its own training tasks, the init's recorded in the lineage, and the init's
    # ancestors (trained on subsets of the init's data)
    again = check_tasks([], "base38", [str(ROOT / "base")])
    assert {t for d in again["datasets"] for t in d["env_tasks"]} == set(BASE38_TASKS)
