"""Write -> read round trips: exact states/actions, frames within codec tolerance, metadata and stats."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rfm.data import video
from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter

from .conftest import square_frame, write_dataset


@pytest.mark.parametrize("kind", ["video", "image"])
def test_round_trip(kind, video_dataset, image_dataset):
    w = video_dataset if kind == "video" else image_dataset
    ds = LeRobotDataset(w.root)
    assert ds.num_episodes == 3 and ds.num_frames == sum(w.lengths) and ds.fps == 10
    assert ds.tasks == ["pick the cube", "open the drawer"] and ds.robot_type == "test"
    assert ds.cameras == ["front", "wrist"] and ds.image_shape("wrist") == (32, 40, 3)
    assert ds.state_names == ["x", "y", "z"] and ds.action_names == ["vx", "vy"]
    np.testing.assert_array_equal(ds.states, np.stack(w.states))
    np.testing.assert_array_equal(ds.actions, np.stack(w.actions))
    assert ds.episode_range(1) == (12, 27)
    assert [ds.instruction(i) for i in range(ds.num_frames)] == w.tasks
    assert ds.episode_meta(2)["seed"] == 102
    np.testing.assert_array_equal(ds.extras["next.success"], np.concatenate([np.arange(t) == t - 1 for t in w.lengths]))
    for i in range(ds.num_frames):
        f = ds.get_frame(i)
        for cam in ds.cameras:
            diff = np.abs(f["images"][cam].astype(int) - w.frames[cam][i])
            if kind == "image":
                assert diff.max() == 0
            else:
                assert diff.mean() < 3.0 and diff.max() < 90, (cam, i, diff.mean(), diff.max())


def test_layout_matches_lerobot(video_dataset):
    root = video_dataset.root
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 36
    assert info["splits"] == {"train": "0:3"} and info["data_path"].startswith("data/chunk-")
    assert info["features"]["observation.images.front"]["info"]["video.codec"] in ("av1", "h264")
    assert list(info["features"])[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/info.json",
        "meta/stats.json", "meta/tasks.parquet", "videos/observation.images.front/chunk-000/file-000.mp4",
        "videos/observation.images.wrist/chunk-000/file-000.mp4"]
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in eps] == [0, 12, 27]
    assert [e["videos/observation.images.front/from_timestamp"] for e in eps] == [0.0, 1.2, 2.7]
    assert eps[1]["tasks"] == ["open the drawer"] and "stats/action/q99" in eps[0]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert str(data.schema.field("observation.state").type) == "fixed_size_list<element: float>[3]"
    assert data.schema.field("timestamp").type == "float" and b"huggingface" in data.schema.metadata
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "__index_level_0__"] and b"pandas" in tasks.schema.metadata


def test_stats(video_dataset):
    ds = LeRobotDataset(video_dataset.root)
    s = np.stack(video_dataset.states).astype(np.float64)
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], s.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], s.std(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["q01"], np.quantile(s, 0.01, axis=0), rtol=1e-6)
    assert ds.stats["action"]["count"].tolist() == [36]
    img = ds.stats["observation.images.front"]
    assert img["mean"].shape == (3, 1, 1) and 0 < img["mean"].min() < 0.1 and img["max"].max() <= 1.0


@pytest.mark.parametrize("codec", [c for c in ("libsvtav1", "libx264") if c in video.available_encoders()])
def test_codecs(tmp_path, codec):
    w = write_dataset(tmp_path / "ds", lengths=(6, 5), vcodec=codec, cameras={"cam": (32, 32)})
    ds = LeRobotDataset(w.root)
    assert ds.features["observation.images.cam"]["info"]["video.codec"] == {"libsvtav1": "av1", "libx264": "h264"}[codec]
    got = np.stack([ds.get_frame(i)["images"]["cam"] for i in range(ds.num_frames)]).astype(int)
    assert np.abs(got - np.stack(w.frames["cam"])).mean() < 3.0


def test_atomic_abort_leaves_nothing(tmp_path):
    root = tmp_path / "ds"
    writer = LeRobotDatasetWriter(root, fps=5, cameras={"c": (16, 16)}, state_names=["a"], action_names=["b"])
    with pytest.raises(RuntimeError), writer as w:
        w.add_frame(images={"c": square_frame(0, 16, 16)}, state=[1.0], action=[2.0], task="t")
        w.save_episode()
        raise RuntimeError("simulated failure mid-conversion")
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_atomic_overwrite_and_exists(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, lengths=(3,), cameras={"c": (16, 16)})
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter(root, fps=10, action_names=["a"])
    w = LeRobotDatasetWriter(root, fps=10, state_names=[], action_names=["a"], overwrite=True)
    w.add_frame(action=[1.0], task="only actions")
    w.save_episode()
    w.finalize()
    ds = LeRobotDataset(root)
    assert ds.num_frames == 1 and ds.cameras == [] and ds.states.shape == (1, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_writer_input_errors(tmp_path):
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=10, cameras={"c": (16, 16)}, state_names=["a"], action_names=["b"])
    with pytest.raises(ValueError, match="observation.images.c.*expected \\(16, 16, 3\\) uint8"):
        w.add_frame(images={"c": np.zeros((8, 8, 3), np.uint8)}, state=[0.0], action=[0.0], task="t")
    with pytest.raises(ValueError, match="cameras"):
        w.add_frame(images={}, state=[0.0], action=[0.0], task="t")
    with pytest.raises(ValueError, match="state has 2 values, expected 1"):
        w.add_frame(images={"c": np.zeros((16, 16, 3), np.uint8)}, state=[0.0, 1.0], action=[0.0], task="t")
    with pytest.raises(ValueError, match="field 'action': NaN or infinite value at b"):  # the reader would refuse it
        w.add_frame(images={"c": np.zeros((16, 16, 3), np.uint8)}, state=[0.0], action=[np.inf], task="t")
    w.add_frame(images={"c": np.zeros((16, 16, 3), np.uint8)}, state=[0.0], action=[0.0], task="t")
    with pytest.raises(ValueError, match="extra column 'r': has 3 values, the episode has 1"):
        w.save_episode(extra={"r": [1, 2, 3]})
    with pytest.raises(ValueError, match="not saved"):
        w.finalize()
    w.abort()


def test_video_timestamps_must_follow_fps(tmp_path):
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=10, cameras={"c": (16, 16)}, state_names=["a"], action_names=["b"])
    for i, t in enumerate((0.0, 0.1, 0.35)):
        w.add_frame(images={"c": square_frame(i, 16, 16)}, state=[0], action=[0], task="t", timestamp=t)
    with pytest.raises(ValueError, match="field 'timestamp': off the 10 Hz grid"):
        w.save_episode()
    w.clear_episode()
    for i, t in enumerate((0.0, 0.2, 0.1)):
        w.add_frame(images={"c": square_frame(i, 16, 16)}, state=[0], action=[0], task="t", timestamp=t)
    with pytest.raises(ValueError, match="not strictly increasing"):
        w.save_episode()
    w.abort()


def test_file_rollover(tmp_path):
    """Tiny size limits: episodes spread over several data and video files; offsets restart per video file."""
    root = tmp_path / "ds"
    w = LeRobotDatasetWriter(root, fps=10, cameras={"c": (16, 16)}, state_names=["a"], action_names=["b"],
                             data_file_mb=1e-6, video_file_mb=1e-6)
    for ep in range(4):
        for i in range(30):
            w.add_frame(images={"c": square_frame(i + ep, 16, 16)}, state=[ep], action=[i], task="t")
        w.save_episode()
    w.finalize()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if "data/" in p.as_posix())
    assert files == [f"data/chunk-000/file-00{i}.parquet" for i in range(4)]
    videos = sorted((root / "videos/observation.images.c/chunk-000").iterdir())
    assert len(videos) >= 2  # the encoder's lookahead may keep the first episode's bytes unflushed
    ds = LeRobotDataset(root)
    assert ds.episode(3).videos["observation.images.c"][0] == videos[-1]
    np.testing.assert_array_equal(ds.states[:, 0], np.repeat(np.arange(4), 30))
    for g in (5, 40, 75, 119):
        got = ds.get_frame(g)["images"]["c"].astype(int)
        assert np.abs(got - square_frame(g % 30 + g // 30, 16, 16)).mean() < 3.0
