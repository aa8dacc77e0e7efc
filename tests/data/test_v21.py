"""LeRobot v2.1 (one parquet and one mp4 per episode, JSON-lines metadata), built here with pyarrow + PyAV."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rfm.data import video
from rfm.data.lerobot import LeRobotDataset

from .conftest import square_frame


def make_v21(root, lengths=(6, 4), fps=15):
    rng = np.random.default_rng(1)
    feats = {
        "observation.images.cam": {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"],
                                   "info": {"video.fps": fps, "video.codec": "h264"}},
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["j0", "j1"]}},
        "action": {"dtype": "float32", "shape": [3], "names": {"motors": ["a0", "a1", "a2"]}},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in
           (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
            ("task_index", "int64"))},
    }
    info = {"codebase_version": "v2.1", "robot_type": "koch", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": 2, "total_videos": len(lengths), "total_chunks": 1,
            "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": feats}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "stack"}\n{"task_index": 1, "task": "push"}\n')
    (root / "meta/episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [["stack", "push"][e % 2]], "length": t}) + "\n"
        for e, t in enumerate(lengths)))
    states, actions, frames, start = [], [], [], 0
    for e, t in enumerate(lengths):
        s = rng.standard_normal((t, 2)).astype(np.float32)
        a = rng.standard_normal((t, 3)).astype(np.float32)
        imgs = np.stack([square_frame(i + e, 32, 32) for i in range(t)])
        table = pa.table({  # v2.x data written by `datasets` has variable-length list columns
            "observation.state": pa.array(s.tolist(), pa.list_(pa.float32())),
            "action": pa.array(a.tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(t) / fps, pa.float32()),
            "frame_index": pa.array(np.arange(t), pa.int64()),
            "episode_index": pa.array(np.full(t, e), pa.int64()),
            "index": pa.array(np.arange(start, start + t), pa.int64()),
            "task_index": pa.array(np.full(t, e % 2), pa.int64()),
        })
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        enc = "libx264" if "libx264" in video.available_encoders() else video.available_encoders()[0]
        vw = video.VideoFileWriter(root / f"videos/chunk-000/observation.images.cam/episode_{e:06d}.mp4", fps, 32, 32, enc)
        vw.write(imgs)
        vw.close()
        states.append(s)
        actions.append(a)
        frames.append(imgs)
        start += t
    return np.concatenate(states), np.concatenate(actions), np.concatenate(frames)


def test_read_v21(tmp_path):
    root = tmp_path / "v21"
    states, actions, frames = make_v21(root)
    ds = LeRobotDataset(root)
    assert ds.version == "v2.1" and ds.fps == 15 and ds.robot_type == "koch"
    assert ds.num_episodes == 2 and ds.num_frames == 10 and ds.tasks == ["stack", "push"]
    assert ds.cameras == ["cam"] and ds.state_names == ["j0", "j1"] and ds.action_names == ["a0", "a1", "a2"]
    np.testing.assert_array_equal(ds.states, states)
    np.testing.assert_array_equal(ds.actions, actions)
    assert ds.episode_range(1) == (6, 10) and ds.instruction(7) == "push"
    # no stats.json in v2.1: vector stats are computed from the data
    np.testing.assert_allclose(ds.stats["action"]["mean"], actions.astype(np.float64).mean(0), rtol=1e-6)
    got = np.stack([ds.get_frame(i)["images"]["cam"] for i in range(10)]).astype(int)
    assert np.abs(got - frames).mean() < 3.0
