"""Datasets written by the real lerobot 0.4.4 (shared/fixtures) read with exact expected values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfm.data.lerobot import LeRobotDataset

from .conftest import FIXTURES

pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason="shared/fixtures/lerobot-v3.0 not present")
TASKS = ["reach the red target", "press the button", "open the drawer"]


def expected_values() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    states, actions = [], []
    for _ in range(120):
        states.append(rng.standard_normal(4))
        actions.append(rng.standard_normal(4))
    return np.asarray(states, np.float32), np.asarray(actions, np.float32)


def expected_top(i: int) -> np.ndarray:
    img = np.zeros((96, 96, 3), np.uint8)
    img[i:i + 10, i:i + 10] = 255
    return img


@pytest.mark.parametrize("kind", ["video", "image"])
def test_metadata(kind):
    ds = LeRobotDataset(FIXTURES / kind)
    assert ds.version == "v3.0" and ds.fps == 10 and ds.robot_type == "sawyer"
    assert ds.num_episodes == 3 and ds.num_frames == 120 and ds.tasks == TASKS
    assert ds.cameras == ["top", "wrist"] and ds.image_shape("top") == (96, 96, 3)
    assert ds.state_names == ["x", "y", "z", "g"] and ds.action_names == ["dx", "dy", "dz", "dg"]
    assert [ds.episode_range(e) for e in range(3)] == [(0, 40), (40, 80), (80, 120)]
    assert ds.uses_video == (kind == "video")


@pytest.mark.parametrize("kind", ["video", "image"])
def test_states_actions_exact(kind):
    ds = LeRobotDataset(FIXTURES / kind)
    states, actions = expected_values()
    assert ds.states.dtype == np.float32 and ds.actions.dtype == np.float32
    np.testing.assert_array_equal(ds.states, states)
    np.testing.assert_array_equal(ds.actions, actions)
    np.testing.assert_array_equal(ds.episode_index, np.repeat(np.arange(3), 40))
    np.testing.assert_allclose(ds.timestamps, np.tile(np.arange(40) / 10, 3), atol=1e-6)


@pytest.mark.parametrize("kind", ["video", "image"])
def test_stats_from_stats_json(kind):
    ds = LeRobotDataset(FIXTURES / kind)
    raw = json.loads((FIXTURES / kind / "meta/stats.json").read_text())
    for feat in ("observation.state", "action"):
        for stat in ("mean", "std", "min", "max", "q01", "q99"):
            np.testing.assert_array_equal(ds.stats[feat][stat], np.asarray(raw[feat][stat]))
    states, _ = expected_values()
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], states.mean(0), atol=1e-6)
    assert int(ds.stats["action"]["count"][0]) == 120
    assert ds.stats["observation.images.top"]["mean"].shape == (3, 1, 1)


@pytest.mark.parametrize("kind", ["video", "image"])
def test_frames(kind):
    ds = LeRobotDataset(FIXTURES / kind)
    tol = 0 if kind == "image" else 40  # AV1 at crf 30 smears the square's edge a little
    for g in (0, 17, 45, 119):
        f = ds.get_frame(g)
        i = g % 40
        assert f["episode_index"] == g // 40 and f["frame_index"] == i
        assert f["instruction"] == TASKS[g // 40]
        assert abs(f["timestamp"] - i / 10) < 1e-6
        top, wrist = f["images"]["top"], f["images"]["wrist"]
        assert top.shape == (96, 96, 3) and top.dtype == np.uint8
        diff_top = np.abs(top.astype(int) - expected_top(i))
        diff_wrist = np.abs(wrist.astype(int) - expected_top(i)[::-1])
        assert diff_top.max() <= tol and diff_wrist.max() <= tol, (diff_top.max(), diff_wrist.max())
        if kind == "video":
            assert diff_top.mean() < 2.0
        np.testing.assert_array_equal(f["state"], expected_values()[0][g])


def test_a_dataset_indexes_and_iterates_like_lerobots():
    ds = LeRobotDataset(FIXTURES / "image")
    assert ds[17]["frame_index"] == ds.get_frame(17)["frame_index"] == 17 and ds[-1]["episode_index"] == 2
    assert [f["frame_index"] for f in ds][:3] == [0, 1, 2] and sum(1 for _ in ds) == len(ds) == 120
    with pytest.raises(IndexError, match="frame index 120: the dataset has 120 frames"):
        ds[120]


def test_episode_frames_cannot_change_the_cached_frames():
    ds = LeRobotDataset(FIXTURES / "image")
    frames = ds.episode_frames(0, "top")
    with pytest.raises(ValueError, match="read-only"):
        frames[0] = 255
    assert ds.get_frame(0)["images"]["top"].flags.writeable  # get_frame hands out its own copy
