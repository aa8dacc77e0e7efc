"""`rfm data check-tasks`: a dataset's tasks against an allowed set (the base model's pretraining data)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rfm.cli.main import main
from rfm.sim.generate import write_metaworld
from rfm.sim.instructions import INSTRUCTIONS
from rfm.sim.task_check import TaskCheckError, check_tasks


def _sim(instruction=lambda task: INSTRUCTIONS[task][0]):
    """A stand-in for rfm.sim.metaworld: two-frame episodes instructed by `instruction(task)`."""
    def generate_episodes(tasks, episodes_per_task, cameras, size, seed, workers, progress, **_):
        for task in tasks:
            for k in range(episodes_per_task):
                yield SimpleNamespace(task=task, instruction=instruction(task), seed=seed + k, success=True,
                                      frames={c: np.zeros((2, size, size, 3), np.uint8) for c in cameras},
                                      state=np.zeros((2, 4), np.float32), action=np.zeros((2, 4), np.float32))
    return SimpleNamespace(generate_episodes=generate_episodes, STATE_NAMES=["x", "y", "z", "g"],
                           ACTION_NAMES=["dx", "dy", "dz", "dg"], CONTROL_HZ=80)


def _data(path, tasks, sim=None):
    write_metaworld(path, tasks, 1, ["corner"], 8, progress=False, sim=sim or _sim())
    return str(path)


def test_a_dataset_of_allowed_tasks_passes_and_says_which_are_missing(tmp_path):
    ds = _data(tmp_path / "ok", ["reach-v3", "door-open-v3"])
    result = check_tasks([ds], "base38")
    assert result["passed"] and len(result["allowed"]) == 38
    assert result["datasets"][0]["env_tasks"] == ["door-open-v3", "reach-v3"]
    assert "reach-v3" not in result["missing"] and len(result["missing"]) == 36


def test_a_foreign_task_is_named_by_instruction_and_env_task(tmp_path):
    ok = _data(tmp_path / "ok", ["reach-v3"])
    held_out = _data(tmp_path / "lock", ["door-lock-v3"])
    with pytest.raises(TaskCheckError, match=r"lock: 'lock the door'; .*lock: env task 'door-lock-v3'"):
        check_tasks([ok, held_out], "base38")
    # a paraphrase is not a training sentence: it is foreign too, whatever task it paraphrases
    para = _data(tmp_path / "para", ["reach-v3"], _sim(lambda task: INSTRUCTIONS[task][1]))
    with pytest.raises(TaskCheckError, match="'move the gripper to the red dot'"):
        check_tasks([para], "base38")


def test_cli_writes_the_check_records_it_in_a_card_and_fails_in_one_line(tmp_path, capsys, small_interface):
    from rfm import RFMPolicy

    ds = _data(tmp_path / "ok", ["reach-v3"])
    ckpt = RFMPolicy.build("tiny", interface=small_interface).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "check.json"
    assert main(["data", "check-tasks", ds, "--tasks", "base38", "--out", str(out), "--record", str(ckpt)]) == 0
    assert "ok: 1 of the 38 allowed tasks" in capsys.readouterr().out
    assert json.loads(out.read_text())["datasets"][0]["env_tasks"] == ["reach-v3"]
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    assert meta["data"]["task_check"]["passed"] and len(meta["data"]["task_check"]["allowed"]) == 38
    assert "task_check" in (ckpt / "README.md").read_text()  # the card's Data section shows it
    bad = _data(tmp_path / "bad", ["hand-insert-v3"])
    assert main(["data", "check-tasks", f"{ds},{bad}", "--tasks", "base38"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "env task 'hand-insert-v3'" in err
    assert main(["data", "check-tasks", ds, "--tasks", "base83"]) == 2
    assert "Did you mean 'base38'" in capsys.readouterr().err


def test_a_starting_checkpoint_is_checked_with_its_lineage(tmp_path, capsys, small_interface):
    """A base fine-tuned from another checkpoint inherits its tasks: the card's and every ancestor's are checked."""
    from rfm import RFMPolicy
    from rfm.checkpoint import update_meta

    ds = _data(tmp_path / "ok", ["reach-v3"])
    ckpt = RFMPolicy.build("tiny", interface=small_interface).save_pretrained(tmp_path / "mt10")
    mt10 = [INSTRUCTIONS[t][0] for t in ("push-v3", "door-open-v3")]
    update_meta(ckpt, "data", {"dataset": "d/demos,d/recorded", "tasks": mt10})
    update_meta(ckpt, "lineage", [{"path": "runs/c1", "dataset": "d/demos"}])  # an ancestor on a subset: known
    result = check_tasks([ds], "base38", [str(ckpt)])
    assert result["datasets"][1] == {"path": str(ckpt), "checkpoint": True, "instructions": mt10,
                                     "env_tasks": ["door-open-v3", "push-v3"]}
    assert main(["data", "check-tasks", ds, "--tasks", "base38", "--init", str(ckpt)]) == 0
    assert "ok: 3 of the 38" in capsys.readouterr().out

    update_meta(ckpt, "lineage", [{"path": "runs/lock", "dataset": "d/lock", "tasks": [INSTRUCTIONS["door-lock-v3"][0]]},
                                  {"path": "runs/c0", "dataset": "elsewhere"}])
    with pytest.raises(TaskCheckError) as e:
        check_tasks([ds], "base38", [str(ckpt)])
    assert "'lock the door'" in str(e.value)  # an ancestor's foreign task
    assert "ancestor runs/c0: trained on 'elsewhere', whose tasks its card does not record" in str(e.value)
    assert main(["data", "check-tasks", ds, "--tasks", "base38", "--init", str(tmp_path / "nope")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err


def test_fine_tuning_records_the_inits_tasks_in_the_lineage():
    from rfm.train.loop import _lineage

    entry = _lineage("checkpoints/default", {"model_id": "d", "data": {"dataset": "x", "tasks": ["reach the goal"]},
                                             "lineage": [{"path": "older"}]})
    assert entry[0]["tasks"] == ["reach the goal"] and entry[1] == {"path": "older"}


def test_cli_checks_a_checkpoint_alone_and_asks_for_something_to_check(tmp_path, capsys, small_interface):
    from rfm import RFMPolicy
    from rfm.checkpoint import update_meta

    ckpt = RFMPolicy.build("tiny", interface=small_interface).save_pretrained(tmp_path / "c")
    update_meta(ckpt, "data", {"dataset": "d", "tasks": [INSTRUCTIONS["reach-v3"][0]]})
    assert main(["data", "check-tasks", "--init", str(ckpt), "--tasks", "base38"]) == 0
    assert "ok: 1 of the 38 allowed tasks in" in capsys.readouterr().out
    assert main(["data", "check-tasks", "--tasks", "base38"]) == 2
    assert "give dataset directories, --init CHECKPOINT, or both" in capsys.readouterr().err
