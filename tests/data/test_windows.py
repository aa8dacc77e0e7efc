"""Training windows: shapes, action padding past the episode end, resizing, caching, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rfm.data.lerobot import LeRobotDataset
from rfm.data.windows import WindowDataset, collate_windows, interface_from_dataset


@pytest.fixture
def ds(video_dataset):
    return LeRobotDataset(video_dataset.root)


def test_interface_from_dataset(ds):
    itf = interface_from_dataset(ds, chunk_size=4, image_size=(24, 24))
    assert itf.cameras == ["front", "wrist"] and itf.state_names == ["x", "y", "z"] and itf.action_dim == 2
    assert itf.control_hz == 10.0 and itf.robot_type == "test" and itf.image_size == (24, 24)
    with pytest.raises(ValueError, match="Did you mean 'front'"):
        interface_from_dataset(ds, cameras=["fron"])


def test_window_shapes_and_padding(ds, video_dataset):
    itf = interface_from_dataset(ds, chunk_size=5, image_size=(24, 20))
    wd = WindowDataset(ds, itf)
    assert len(wd) == 36
    item = wd[9]  # episode 0 has 12 frames: t=9 -> actions 9, 10, 11 then the last one repeated
    assert item["images"].shape == (2, 3, 24, 20) and item["images"].dtype == torch.uint8
    assert item["state"].dtype == torch.float32 and item["state"].shape == (3,)
    assert item["actions"].shape == (5, 2) and item["action_pad"].tolist() == [False, False, False, True, True]
    acts = np.stack(video_dataset.actions)
    np.testing.assert_array_equal(item["actions"].numpy(), acts[[9, 10, 11, 11, 11]])
    np.testing.assert_array_equal(item["state"].numpy(), video_dataset.states[9])
    assert item["instruction"] == "pick the cube" and item["episode_index"] == 0
    first = wd[12]  # first frame of episode 1: no padding
    assert first["episode_index"] == 1 and not first["action_pad"].any()
    np.testing.assert_array_equal(first["actions"].numpy(), acts[12:17])
    # a demonstration's executed actions are its actions
    assert not item["executed_recorded"] and torch.equal(item["executed"], item["actions"])


def test_windows_carry_the_frames_a_chunk_ahead_when_asked(ds):
    """For the world-model objective: the frames chunk_size steps ahead, the episode's last past its end."""
    itf = interface_from_dataset(ds, chunk_size=5, image_size=(24, 20))
    wd, plain = WindowDataset(ds, itf, future=5), WindowDataset(ds, itf)
    assert "future_images" not in plain[0]
    assert torch.equal(wd[2]["future_images"], wd[7]["images"])  # episode 0: t = 2 -> 7
    assert torch.equal(wd[9]["future_images"], wd[11]["images"])  # 14 is past its 12 frames: the last one
    assert collate_windows([wd[0], wd[1]])["future_images"].shape == (2, 2, 3, 24, 20)


def test_windows_of_a_recording_carry_what_the_robot_executed(tmp_path):
    """A fleet recording labels ticks with the expert's correction (`action`) and keeps what the robot executed
    (`action_executed`): windows carry both, so training can commit the executed actions as a prefix."""
    from rfm.constants import ACTION_EXECUTED
    from rfm.data.lerobot import LeRobotDatasetWriter

    rng = np.random.default_rng(0)
    w = LeRobotDatasetWriter(tmp_path / "rec", fps=10, cameras={"front": (16, 16)}, state_names=["x"],
                             action_names=["vx", "vy"], use_videos=False)
    labels, executed = rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
    for a in labels:
        w.add_frame(images={"front": np.zeros((16, 16, 3), np.uint8)}, state=np.zeros(1, np.float32), action=a,
                    task="push")
    w.save_episode(extra={ACTION_EXECUTED: executed})
    w.finalize()
    rec = LeRobotDataset(tmp_path / "rec")
    wd = WindowDataset(rec, interface_from_dataset(rec, chunk_size=4, image_size=(16, 16)))
    batch = collate_windows([wd[1], wd[4]])
    assert batch["executed_recorded"].tolist() == [True, True]
    np.testing.assert_array_equal(batch["actions"][0].numpy(), labels[1:5])
    np.testing.assert_array_equal(batch["executed"][0].numpy(), executed[1:5])
    np.testing.assert_array_equal(batch["executed"][1].numpy(), executed[[4, 5, 5, 5]])  # padded like the actions


def test_resized_images_match_source(ds):
    itf = interface_from_dataset(ds, chunk_size=2, image_size=(48, 48), cameras=["front"])
    wd = WindowDataset(ds, itf, episodes=[2])
    assert len(wd) == 9 and wd[0]["episode_index"] == 2
    src = ds.get_frame(27)["images"]["front"]
    np.testing.assert_array_equal(wd[0]["images"][0].permute(1, 2, 0).numpy(), src)  # same size: no resampling
    assert len(wd.cache) == 1  # the episode was decoded once
    for i in range(len(wd)):
        wd[i]
    assert wd.cache.hits >= 8 and wd.cache.misses == 1


def test_collate_and_workers(ds):
    itf = interface_from_dataset(ds, chunk_size=4, image_size=(16, 16))
    wd = WindowDataset(ds, itf)
    batch = collate_windows([wd[0], wd[20], wd[35]])
    assert batch["images"].shape == (3, 2, 3, 16, 16) and batch["actions"].shape == (3, 4, 2)
    assert batch["action_pad"].shape == (3, 4) and batch["episode_index"].tolist() == [0, 1, 2]
    assert batch["instruction"] == ["pick the cube", "open the drawer", "pick the cube"]
    loader = DataLoader(wd, batch_size=8, shuffle=True, num_workers=2, collate_fn=collate_windows)
    seen = sum(b["state"].shape[0] for b in loader)
    assert seen == 36


def test_interface_mismatch(ds):
    from rfm.config import RobotInterface

    bad = RobotInterface(cameras=["front"], state_names=["a"], action_names=["b", "c"])
    with pytest.raises(ValueError, match="dataset state has 3 values, the interface expects 1"):
        WindowDataset(ds, bad)


def test_warns_when_cache_cannot_hold_the_episodes(ds):
    itf = interface_from_dataset(ds, chunk_size=2, image_size=(32, 32))
    with pytest.warns(UserWarning, match="frame cache holds"):
        WindowDataset(ds, itf, cache_bytes=1000)
