"""Training pipeline on a real LeRobot dataset (written by the real lerobot package): train, checkpoint, resume,
fine-tune onto a new robot."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.config import ConfigError
from rfm.train.config import TrainConfig
from rfm.train.loop import train

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def _cfg(out: Path, **kw) -> TrainConfig:
    base = {"dataset": str(FIXTURE), "out": str(out), "preset": "tiny", "steps": 12, "batch_size": 8, "chunk_size": 8,
                "image_size": (48, 48), "num_workers": 0, "save_every": 6, "log_every": 3, "warmup_steps": 2, "val_episodes": 1}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(_cfg(out), progress=False)
    return out


def test_run_writes_checkpoint_logs_and_curve(run):
    ckpt = run / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "model.safetensors", "stats.json", "README.md",
                                                "training_state"}
    rows = list(csv.DictReader((run / "logs" / "train.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert all(float(r["loss"]) > 0 for r in rows) and rows[-1]["val_loss"]
    assert (run / "logs" / "loss.png").stat().st_size > 1000
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["interface"]["cameras"] == ["top", "wrist"] and cfg["interface"]["image_size"] == [48, 48]
    assert cfg["meta"]["training"]["steps_done"] == 12 and cfg["meta"]["data"]["episodes"] == 2
    stats = json.loads((ckpt / "stats.json").read_text())
    assert len(stats["action"]["mean"]) == 4


def test_checkpoint_serves_predictions(run):
    policy = RFMPolicy.from_pretrained(run / "checkpoint")
    images = np.zeros((1, 2, 3, 48, 48), np.uint8)
    out = policy.predict(images, np.zeros((1, 4), np.float32), ["reach the red target"])
    assert out.shape == (1, 8, 4) and np.all(np.isfinite(out))


def test_resume_continues_from_the_saved_step(run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    train(_cfg(out, steps=15, resume=True), progress=False)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12, 15]  # appended, not restarted
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["training"]["steps_done"] == 15


def test_finetune_a_new_robot_reinitialises_only_mismatched_layers(run, tmp_path):
    # same dataset, but a different chunk size and one camera: vision/fusion weights carry over
    out = tmp_path / "ft"
    train(_cfg(out, steps=3, chunk_size=4, cameras=["wrist"], init=str(run / "checkpoint"), val_episodes=0),
          progress=False)
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    reinit = set(meta["training"]["init_reinitialised"])
    assert reinit == {"cam_embed", "action_pos"}
    # the card names what it was fine-tuned from, and that checkpoint's data and steps
    parent = json.loads((run / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["lineage"] == [{"model_id": "tiny", "model_version": parent["model_version"],
                                "path": str(run / "checkpoint"), "dataset": str(FIXTURE), "steps": 12}]
    assert "## Lineage" in (out / "checkpoint" / "README.md").read_text()


def test_instruction_variants_train_and_are_recorded_in_the_card(tmp_path):
    out = tmp_path / "variants"
    train(_cfg(out, steps=3, val_episodes=0, instruction_variants="metaworld", variant_prob=1.0), progress=False)
    training = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert training["instruction_variants"] == "metaworld" and training["variant_prob"] == 1.0


def test_action_loss_weights_train_by_name_and_a_wrong_name_lists_the_robots_actions(tmp_path):
    out = tmp_path / "weighted"
    train(_cfg(out, steps=2, val_episodes=0, action_loss_weights={"dg": 4}), progress=False)
    training = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert training["action_loss_weights"] == {"dg": 4.0}
    with pytest.raises(ValueError, match="'gripper', not an action of this robot: its actions are dx, dy, dz, dg"):
        train(_cfg(tmp_path / "x", action_loss_weights={"gripper": 4}), progress=False)
    with pytest.raises(ValueError, match="every action dimension at weight 0"):
        train(_cfg(tmp_path / "y", action_loss_weights=dict.fromkeys(["dx", "dy", "dz", "dg"], 0)), progress=False)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="action_loss_weights.*finite weights >= 0"):
            _cfg(tmp_path / "z", action_loss_weights={"dg": bad})


def test_bad_dataset_path_is_named(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="nope"):
        train(_cfg(tmp_path / "x", dataset=str(tmp_path / "nope")), progress=False)


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
    w = LeRobotDatasetWriter(root, fps=10, cameras={"top": (96, 96), "wrist": (96, 96)}, state_names=["x", "y", "z", "g"],
                             action_names=["dx", "dy", "dz", "dg"], use_videos=False,
                             extra_features={"observation.environment_state": env_ft})
    for _ in range(episodes):
        goal = rng.uniform(-1, 1, 3).astype(np.float32)
        for _ in range(length):
            w.add_frame(images={c: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for c in ("top", "wrist")},
                        state=rng.standard_normal(4), action=rng.standard_normal(4), task="reach the red target")
        w.save_episode(extra={"observation.environment_state": np.tile(goal, (length, 1))})
    return w.finalize()


def test_env_state_loss_trains_beside_datasets_without_it(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim")
    out = tmp_path / "env"
    # the fixture has no environment state: its samples are masked out of the auxiliary loss, not an error
    train(_cfg(out, dataset=f"{sim},{FIXTURE}", steps=4, log_every=2, val_episodes=0, env_state_loss=1.0),
          progress=False)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert all(float(r["env_state_loss"]) > 0 for r in rows)
    meta = json.loads((out / "checkpoint" / "config.json").read_text())
    assert meta["model"]["env_state_dim"] == 3 and meta["meta"]["data"]["env_state"]["datasets"] == [str(sim)]
    policy = RFMPolicy.from_pretrained(out / "checkpoint")
    assert "observation.environment_state" in policy.stats  # its normalisation travels with the checkpoint
    out2 = policy.predict(np.zeros((1, 2, 3, 48, 48), np.uint8), np.zeros((1, 4), np.float32), ["reach"])
    assert out2.shape == (1, 8, 4)
    # fine-tuning it without the loss drops the head (nothing would train it) and keeps everything else
    ft = tmp_path / "ft"
    train(_cfg(ft, steps=2, val_episodes=0, init=str(out / "checkpoint")), progress=False)
    cfg = json.loads((ft / "checkpoint" / "config.json").read_text())
    assert cfg["model"]["env_state_dim"] == 0 and cfg["meta"]["training"]["init_reinitialised"] == []


def test_env_state_loss_without_any_env_state_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="observation.environment_state.*" + FIXTURE.name):
        train(_cfg(tmp_path / "x", env_state_loss=1.0), progress=False)


def test_keypoint_loss_trains_beside_datasets_without_it(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim", projections=True)
    out = tmp_path / "kp"
    train(_cfg(out, dataset=f"{sim},{FIXTURE}", steps=4, log_every=2, val_episodes=0, keypoint_loss=1.0,
               model_overrides={"vision_keypoint_source": "block"}), progress=False)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert all(float(r["keypoints_loss"]) > 0 for r in rows) and not any(r["env_state_loss"] for r in rows)
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["model"]["env_state_dim"] == 0 and cfg["model"]["vision_keypoint_source"] == "block"
    assert cfg["meta"]["training"]["keypoint_loss"] == 1.0
    # a dataset with an environment state but no projections cannot place keypoints: say which and why
    bare = _env_state_dataset(tmp_path / "bare")
    with pytest.raises(ValueError, match="camera_projection.*" + bare.name):
        train(_cfg(tmp_path / "x", dataset=str(bare), keypoint_loss=1.0), progress=False)


def test_triangulated_points_take_the_calibration_from_the_data_and_keep_it_when_fine_tuning(tmp_path):
    sim = _env_state_dataset(tmp_path / "sim", projections=True)
    out = tmp_path / "pts"
    train(_cfg(out, dataset=str(sim), steps=3, val_episodes=0, keypoint_loss=1.0, model_overrides={"vision_points": 1},
               scene_shift=0.05), progress=False)
    model = json.loads((out / "checkpoint" / "config.json").read_text())["model"]
    recorded = json.loads((sim / "meta" / "info.json").read_text())["features"]["observation.environment_state"]
    assert model["vision_points"] == 1
    assert json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]["scene_shift"] == 0.05
    assert model["camera_projections"] == [recorded["info"]["camera_projection"][c] for c in ("top", "wrist")]
    # field data records no calibration: a fine-tune keeps the cameras of the checkpoint it starts from
    ft = tmp_path / "ft"
    train(_cfg(ft, steps=2, val_episodes=0, init=str(out / "checkpoint"), preset=None), progress=False)
    cfg = json.loads((ft / "checkpoint" / "config.json").read_text())
    assert cfg["model"]["camera_projections"] == model["camera_projections"]
    assert cfg["meta"]["training"]["init_reinitialised"] == []
    # from scratch it needs a dataset that records the cameras, and says so
    with pytest.raises(ValueError, match="vision_points need camera projections.*" + FIXTURE.name):
        train(_cfg(tmp_path / "x", model_overrides={"vision_points": 1}), progress=False)
    # a scene shift moves triangulated points: without them it is an error, not a silent no-op
    with pytest.raises(ConfigError, match="scene_shift=0.05 needs a model with triangulated points"):
        train(_cfg(tmp_path / "y", dataset=str(sim), scene_shift=0.05), progress=False)
