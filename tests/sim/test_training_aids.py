"""Simulator-privileged training aids plugged into the core trainer by name (rfm.train.aids, rfm.sim.training_aids):
environment-state and keypoint supervision, scene shift, relabelling; and geometry carried from --init."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.config import ConfigError
from rfm.train.aids import available_aids, build_aid
from rfm.train.config import TrainConfig
from rfm.train.loop import train

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def _cfg(out: Path, **kw) -> TrainConfig:
    base = {"dataset": str(FIXTURE), "out": str(out), "preset": "tiny", "steps": 3, "batch_size": 8, "chunk_size": 8,
            "image_size": (48, 48), "num_workers": 0, "save_every": 6, "log_every": 2, "warmup_steps": 1}
    return TrainConfig(**{**base, **kw})


def _env_state_dataset(root: Path, episodes: int = 2, length: int = 12, projections: bool = False) -> Path:
    """A small dataset for the fixture's robot that also records a 3-d environment state (like simulated demos),
    with the cameras' projections if asked (2 m from the origin, looking at it along +z and +x)."""
    from rfm.data.writer import LeRobotDatasetWriter

    rng = np.random.default_rng(0)
    env_ft = {"dtype": "float32", "shape": [3], "names": ["gx", "gy", "gz"]}
    if projections:
        top = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 2.0]]
        side = [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0]]
        env_ft["info"] = {"camera_projection": {"top": top, "wrist": side}}
    w = LeRobotDatasetWriter(root, fps=10, robot_type="sawyer", cameras={"top": (96, 96), "wrist": (96, 96)},
                             state_names=["x", "y", "z", "g"], action_names=["dx", "dy", "dz", "dg"], use_videos=False,
                             extra_features={"observation.environment_state": env_ft})
    for _ in range(episodes):
        goal = rng.uniform(-1, 1, 3).astype(np.float32)
        for _ in range(length):
            w.add_frame(images={c: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for c in ("top", "wrist")},
                        state=rng.standard_normal(4), action=rng.standard_normal(4), task="reach the red target")
        w.save_episode(extra={"observation.environment_state": np.tile(goal, (length, 1))})
    return w.finalize()


def test_the_simulator_aids_are_found_through_the_plugin_entry_point_and_options_are_checked():
    assert {"env_state", "keypoints", "relabel", "scene_shift"} <= set(available_aids())
    with pytest.raises(ConfigError, match="unknown training aid 'keypoint'.*Did you mean 'keypoints'"):
        build_aid("keypoint", {})
    with pytest.raises(ConfigError, match="train.aids.keypoints: unknown option 'wieght'.*Did you mean 'weight'"):
        build_aid("keypoints", {"wieght": 1})
    with pytest.raises(ConfigError, match="train.aids.relabel.rules item 'gripper' is invalid"):
        build_aid("relabel", {"rules": ["gripper"]})


def test_env_state_aid_trains_beside_datasets_without_it_and_leaves_the_policy_alone(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim")
    out = tmp_path / "env"
    # the fixture has no environment state: its samples are masked out of the auxiliary loss, not an error
    train(_cfg(out, dataset=f"{sim},{FIXTURE}", steps=4, aids={"env_state": {"weight": 1.0}}), progress=False)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert all(float(r["env_state_loss"]) > 0 for r in rows)
    meta = json.loads((out / "checkpoint" / "config.json").read_text())
    assert meta["meta"]["data"]["env_state"]["datasets"] == [str(sim)]
    # the head is the aid's, not the policy's: the saved policy has no trace of it, and serves as any other
    policy = RFMPolicy.from_pretrained(out / "checkpoint")
    assert not any(k.startswith("env") for k in policy.net.state_dict())
    out2 = policy.predict(np.zeros((1, 2, 3, 48, 48), np.uint8), np.zeros((1, 4), np.float32), ["reach"])
    assert out2.shape == (1, 8, 4)
    # --resume restores the aid's head too
    train(_cfg(out, dataset=f"{sim},{FIXTURE}", steps=6, aids={"env_state": {}}, resume=True), progress=False)
    with pytest.raises(ValueError, match="observation.environment_state in at least one dataset"):
        train(_cfg(tmp_path / "x", aids={"env_state": {}}), progress=False)


def test_keypoint_aid_reads_the_calibration_the_data_records(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim", projections=True)
    out = tmp_path / "kp"
    train(_cfg(out, dataset=f"{sim},{FIXTURE}", steps=4, aids={"keypoints": {"weight": 1.0}},
               model_overrides={"vision_keypoint_source": "block"}), progress=False)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert all(float(r["keypoints_loss"]) > 0 for r in rows) and "env_state_loss" not in rows[0]
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["meta"]["training"]["aids"] == {"keypoints": {"weight": 1.0}}
    # a dataset with an environment state but no calibration cannot place keypoints: say which and why
    bare = _env_state_dataset(tmp_path / "bare")
    with pytest.raises(ConfigError, match="train.aids.keypoints needs a calibration for every camera"):
        train(_cfg(tmp_path / "x", dataset=str(bare), aids={"keypoints": {}}), progress=False)


def test_triangulated_points_use_the_robots_calibration_by_camera_name(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim", projections=True)
    out = tmp_path / "pts"
    train(_cfg(out, dataset=str(sim), aids={"keypoints": {}, "scene_shift": {"metres": 0.05}},
               model_overrides={"vision_points": 1, "relative_points": True},
               interface={"ee_position": ["x", "y", "z"]}), progress=False)
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    recorded = json.loads((sim / "meta" / "info.json").read_text())["features"]["observation.environment_state"]
    assert cfg["model"]["vision_points"] == 1 and "camera_projections" not in cfg["model"]
    assert cfg["interface"]["calibration"] == {c: {"projection": recorded["info"]["camera_projection"][c]}
                                               for c in ("top", "wrist")}
    assert cfg["interface"]["ee_position"] == ["x", "y", "z"]
    # fine-tuning onto the same robot (robot_type) whose data records no calibration keeps it, by camera name
    ft = tmp_path / "ft"
    train(_cfg(ft, steps=2, init=str(out / "checkpoint"), preset=None), progress=False)
    back = json.loads((ft / "checkpoint" / "config.json").read_text())
    assert back["interface"]["calibration"] == cfg["interface"]["calibration"]
    assert back["model"]["vision_points"] == 1 and back["meta"]["training"]["init_reinitialised"] == []
    # a scene shift moves triangulated points: without them it is an error, not a silent no-op
    with pytest.raises(ConfigError, match="scene_shift needs a model with triangulated points"):
        train(_cfg(tmp_path / "y", dataset=str(sim), aids={"scene_shift": {"metres": 0.05}}), progress=False)
    # asked for points on a robot without calibration: the error names the interface field
    with pytest.raises(ConfigError, match="interface.calibration"):
        train(_cfg(tmp_path / "z", model_overrides={"vision_points": 1}), progress=False)


def test_relabel_aid_changes_the_labels_in_memory_and_records_it(tmp_path):
    out = tmp_path / "relabel"
    train(_cfg(out, aids={"relabel": {"rules": ["dg:0=-1"]}}), progress=False)
    data = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["data"]
    assert data["relabelled_actions"] == {"dg:0=-1": 0}  # the fixture's random labels are never exactly 0


def test_scene_shift_moves_the_end_effector_and_the_points_by_one_offset():
    from types import SimpleNamespace

    import torch

    from rfm.config import RobotInterface
    from rfm.train.aids import TrainBatch

    cal = {c: {"projection": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 2.0 + i]]} for i, c in enumerate("ab")}
    itf = RobotInterface(cameras=["a", "b"], image_size=(32, 32), state_names=["g", "hx", "hy", "hz", "w"],
                         action_names=["a0"], chunk_size=2, calibration=cal, ee_position=["hx", "hy", "hz"])
    policy = RFMPolicy.build("tiny", interface=itf, vision_keypoints=4, vision_points=2)
    aid = build_aid("scene_shift", {"metres": 0.1})
    aid.setup(policy, SimpleNamespace())
    torch.manual_seed(0)
    state = torch.rand(500, 5)
    batch = TrainBatch(torch.zeros(500, 2, 3, 32, 32), state, torch.zeros(500, 4, 8), torch.ones(500, 4),
                       torch.zeros(500, 2, 1), torch.zeros(500, 2, dtype=torch.bool))
    moved = aid.transform(batch)
    torch.testing.assert_close(moved.state[:, 1:4] - state[:, 1:4], moved.point_shift)
    assert torch.equal(moved.state[:, [0, 4]], state[:, [0, 4]])
    assert 0.09 < float(moved.point_shift.abs().max()) <= 0.1  # uniform in +-0.1 per axis
    with pytest.raises(ValueError, match="metres=0"):
        build_aid("scene_shift", {"metres": 0})
