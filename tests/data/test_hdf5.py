"""HDF5 import: ALOHA/ACT (one file per episode) and robomimic (one file, data/demo_N) layouts."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
from PIL import Image

from rfm.data.errors import DatasetError
from rfm.data.hdf5 import import_hdf5
from rfm.data.lerobot import LeRobotDataset

from .conftest import square_frame


def write_aloha(path, t, seed, compress=False):
    rng = np.random.default_rng(seed)
    qpos = rng.standard_normal((t, 14)).astype(np.float32)
    action = rng.standard_normal((t, 14)).astype(np.float32)
    imgs = np.stack([square_frame(i + seed, 24, 32) for i in range(t)])
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        f.create_dataset("action", data=action)
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=qpos)
        obs.create_dataset("qvel", data=qpos * 0)
        g = obs.create_group("images")
        if compress:  # real ALOHA: JPEG bytes, zero-padded to one length
            f.attrs["compress"] = True
            blobs = []
            for im in imgs:
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="JPEG", quality=95)
                blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
            width = max(len(b) for b in blobs)
            g.create_dataset("top", data=np.stack([np.pad(b, (0, width - len(b))) for b in blobs]))
        else:
            g.create_dataset("top", data=imgs)
            g.create_dataset("left_wrist", data=imgs[:, ::-1])
    return qpos, action, imgs


def test_import_aloha(tmp_path):
    src = tmp_path / "aloha"
    src.mkdir()
    eps = [write_aloha(src / f"episode_{i}.hdf5", t, i) for i, t in enumerate((7, 5))]
    root = import_hdf5([src], tmp_path / "out", fps=50, task="transfer the cube", robot_type="aloha")
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 12 and ds.fps == 50 and ds.robot_type == "aloha"
    assert ds.cameras == ["left_wrist", "top"] and ds.image_shape("top") == (24, 32, 3)
    assert ds.tasks == ["transfer the cube"] and ds.state_names[0] == "qpos_0" and len(ds.action_names) == 14
    np.testing.assert_array_equal(ds.states, np.concatenate([e[0] for e in eps]))
    np.testing.assert_array_equal(ds.actions, np.concatenate([e[1] for e in eps]))
    assert np.abs(ds.get_frame(8)["images"]["top"].astype(int) - eps[1][2][1]).mean() < 3.0
    assert ds.episode_meta(1)["source"].endswith("episode_1.hdf5")


def test_import_aloha_compressed_images(tmp_path):
    _, _, imgs = write_aloha(tmp_path / "ep.hdf5", 4, 0, compress=True)
    ds = LeRobotDataset(import_hdf5([tmp_path / "ep.hdf5"], tmp_path / "out", fps=50, task="t", use_videos=False))
    assert ds.cameras == ["top"]
    assert np.abs(ds.get_frame(2)["images"]["top"].astype(int) - imgs[2]).mean() < 4.0


def test_import_robomimic(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "low_dim.hdf5"
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for n, t in ((0, 6), (1, 4), (10, 3)):  # demo_10 must sort after demo_1
            g = data.create_group(f"demo_{n}")
            acts = rng.standard_normal((t, 7)).astype(np.float32)
            eef = rng.standard_normal((t, 3)).astype(np.float32)
            grip = rng.standard_normal((t, 2)).astype(np.float32)
            g.create_dataset("actions", data=acts)
            g.create_dataset("obs/robot0_eef_pos", data=eef)
            g.create_dataset("obs/robot0_gripper_qpos", data=grip)
            g.create_dataset("obs/agentview_image", data=np.stack([square_frame(i, 32, 32) for i in range(t)]))
            demos[n] = (acts, np.concatenate([eef, grip], 1))
    root = import_hdf5([path], tmp_path / "out", fps=20, task="lift the cube")
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == 13 and ds.cameras == ["agentview"]
    assert ds.state_names == ["robot0_eef_pos_0", "robot0_eef_pos_1", "robot0_eef_pos_2",
                              "robot0_gripper_qpos_0", "robot0_gripper_qpos_1"]
    np.testing.assert_array_equal(ds.actions, np.concatenate([demos[n][0] for n in (0, 1, 10)]))
    np.testing.assert_array_equal(ds.states, np.concatenate([demos[n][1] for n in (0, 1, 10)]))
    only_eef = LeRobotDataset(import_hdf5([path], tmp_path / "out2", fps=20, task="t", state_keys=["robot0_eef_pos"]))
    assert only_eef.states.shape == (13, 3)


def test_import_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("action", data=np.zeros((5, 2), np.float32))
        f.create_dataset("observations/qpos", data=np.zeros((4, 2), np.float32))
    with pytest.raises(DatasetError, match=r"bad.hdf5: field '/observations/qpos': has 4 steps, /action has 5"):
        import_hdf5([path], tmp_path / "out", fps=10, task="t")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.hdf5"]
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DatasetError, match="unknown HDF5 layout"):
        import_hdf5([path], tmp_path / "out", fps=10, task="t")
    (tmp_path / "notes.h5").write_text("not hdf5")  # or a truncated copy: the same one-line error naming the file
    for layout in ("auto", "aloha", "robomimic"):
        with pytest.raises(DatasetError, match=r"notes.h5: not a readable HDF5 file"):
            import_hdf5([tmp_path / "notes.h5"], tmp_path / "out", fps=10, task="t", layout=layout)
