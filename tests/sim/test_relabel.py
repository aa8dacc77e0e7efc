"""Action relabelling before training (rfm.train.relabel), on a real dataset on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rfm.config import ConfigError
from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from rfm.sim.relabel import Relabel
from rfm.train.aids import build_aid
from rfm.train.data import build_training_data


def _relabelled(root: Path, *rules: str):
    """Training data with the relabel aid applied, as rfm train does (TrainConfig.aids = {"relabel": ...})."""
    aid = build_aid("relabel", {"rules": list(rules)})
    return build_training_data([str(root)], chunk_size=4, image_size=None, cameras=None, val_episodes=0,
                               prepare=aid.prepare_data)


@pytest.fixture(scope="module")
def grip_data(tmp_path_factory) -> Path:
    """Two episodes ("pick", then Meta-World push's instruction) whose gripper label is 0.0 ("no grip") for the
    first half and 1.0 (close) after."""
    root = tmp_path_factory.mktemp("relabel") / "demos"
    rng = np.random.default_rng(0)
    w = LeRobotDatasetWriter(root, fps=10, cameras={"cam": (32, 32)}, state_names=["x"],
                             action_names=["dx", "gripper"], use_videos=False)
    for task in ("pick", "push the puck to the goal"):
        for t in range(10):
            w.add_frame(images={"cam": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
                        state=np.zeros(1, np.float32), action=np.array([0.0, float(t >= 5)], np.float32),
                        task=task)
        w.save_episode()
    w.finalize()
    return root


def test_relabel_maps_exact_values_in_targets_and_stats_and_leaves_the_files(grip_data):
    data = _relabelled(grip_data, "gripper:0=-1")
    targets = data.train_set[0]["actions"].numpy()  # frames 0..3 of the first episode
    np.testing.assert_array_equal(targets[:, 1], [-1, -1, -1, -1])
    np.testing.assert_array_equal(targets[:, 0], [0, 0, 0, 0])  # dx is 0.0 too, but not named by the rule
    np.testing.assert_array_equal(data.train_set[5]["actions"].numpy()[:, 1], [1, 1, 1, 1])
    assert data.info["relabelled_actions"] == {"gripper:0=-1": 10}
    assert data.stats["action"]["mean"][1] == pytest.approx(0.0) and data.stats["action"]["min"][1] == -1
    assert (LeRobotDataset(grip_data).actions[:, 1] == 0).sum() == 10  # the dataset on disk is unchanged


def test_bad_rules_are_config_errors_that_say_what_was_expected(grip_data):
    with pytest.raises(ConfigError, match="train.aids.relabel.rules item 'gripper=-1'.*NAME:OLD=NEW"):
        build_aid("relabel", {"rules": ["gripper=-1"]})
    with pytest.raises(ConfigError, match="its actions are dx, gripper"):
        _relabelled(grip_data, "grip:0=-1")
    assert [str(r) for r in build_aid("relabel", {"rules": [" gripper : 0 = -1 "]}).rules] == ["gripper:0=-1"]


def test_a_rule_scoped_to_a_task_changes_only_that_tasks_frames(grip_data):
    for scope in ("pick", "push-v3"):  # a task string as stored, or a Meta-World task name for its instruction
        data = _relabelled(grip_data, f"gripper:0=-1@{scope}")
        first, second = data.train_set[0]["actions"].numpy()[:, 1], data.train_set[10]["actions"].numpy()[:, 1]
        hit, kept = (first, second) if scope == "pick" else (second, first)
        np.testing.assert_array_equal(hit, [-1, -1, -1, -1])
        np.testing.assert_array_equal(kept, [0, 0, 0, 0])
        assert data.info["relabelled_actions"] == {f"gripper:0=-1@{scope}": 5}
    with pytest.raises(ConfigError, match="no training frame has task 'pik'; the datasets' tasks are 'pick', 'push"):
        _relabelled(grip_data, "gripper:0=-1@pik")
    with pytest.raises(ConfigError, match="NAME:OLD=NEW@TASK"):
        Relabel.parse("gripper:0=-1@ ")
    assert str(Relabel.parse("gripper:0=-1@ pick-place-v3")) == "gripper:0=-1@pick-place-v3"
