"""`rfm data` subcommands: info, view, import-hdf5, and generate (fake simulator injected; the real
Meta-World one when rfm.sim.metaworld exists)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from rfm.cli.main import main
from rfm.data.lerobot import LeRobotDataset
from rfm.data.windows import WindowDataset, collate_windows, interface_from_dataset
from rfm.sim.generate import write_metaworld

from .conftest import square_frame


def test_info_json(video_dataset, capsys):
    assert main(["data", "info", str(video_dataset.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["frames"] == 36 and info["fps"] == 10
    assert info["tasks"] == ["pick the cube", "open the drawer"] and info["size_on_disk_mb"] > 0
    assert info["features"]["action"] == "float32 [2]" and info["cameras"]["front"].startswith("video")


def test_info_table_and_errors(video_dataset, tmp_path, capsys):
    assert main(["data", "info", str(video_dataset.root)]) == 0
    assert "episodes" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_names_values_that_never_change(video_dataset, tmp_path, capsys):
    """A gripper left unmapped holds one value in every frame: `rfm data info` says so before a fine-tune."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = shutil.copytree(video_dataset.root, tmp_path / "ds")
    path = root / "data" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(path)
    i = t.schema.get_field_index("action")
    vals = np.asarray(t.column(i).combine_chunks().flatten()).reshape(-1, 2).copy()
    vals[:, 1] = 0.5
    pq.write_table(t.set_column(i, "action", pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1),
                                                                                         pa.float32()), 2)), path)
    assert main(["data", "info", str(root)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("unchanging"))
    names = LeRobotDataset(root).action_names
    assert line.split(None, 1)[1] == f"action: {names[1]}"
    assert main(["data", "info", str(video_dataset.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanging"] == {"state": [], "action": [], "cameras": []}


def test_info_names_a_camera_that_recorded_one_flat_colour(tmp_path, capsys):
    """A camera unplugged or covered while recording gives black frames for the episode: nothing but the frames
    says so, and a model trains on them. `rfm data info` names the camera and the episodes."""
    from rfm.data.lerobot import LeRobotDatasetWriter

    w = LeRobotDatasetWriter(tmp_path / "ds", fps=10, robot_type="arm", cameras={"top": (16, 16), "wrist": (16, 16)},
                             state_names=["x"], action_names=["vx"], use_videos=False)
    rng = np.random.default_rng(0)
    for ep in range(3):
        for _ in range(4):
            top = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            wrist = np.zeros((16, 16, 3), np.uint8) if ep == 1 else rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            w.add_frame(images={"top": top, "wrist": wrist}, state=rng.standard_normal(1).astype(np.float32),
                        action=rng.standard_normal(1).astype(np.float32), task="pick")
        w.save_episode()
    w.finalize()
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("unchanging"))
    assert line.split(None, 1)[1] == "cameras: wrist (episodes 1 of 3)"
    from rfm.train.data import build_training_data

    notes = build_training_data([str(tmp_path / "ds")], 2, None, None, 0).notes  # rfm train says it too
    assert len(notes) == 1 and "camera 'wrist' is one flat colour in episode(s) 1 of 3" in notes[0]


def test_view_png(image_dataset, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["data", "view", str(image_dataset.root), "--episode", "1", "--out", str(out), "--frames", "4"]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    assert main(["data", "view", str(image_dataset.root), "--episode", "7", "--out", str(out)]) == 2


@pytest.mark.integration
def test_import_hdf5_cli(tmp_path):
    path = tmp_path / "ep0.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("action", data=np.ones((3, 2), np.float32))
        f.create_dataset("observations/qpos", data=np.zeros((3, 2), np.float32))
        f.create_dataset("observations/images/top", data=np.stack([square_frame(i, 16, 16) for i in range(3)]))
    out = subprocess.run([sys.executable, "-m", "rfm.cli.main", "data", "import-hdf5", str(path), "--out",
                          str(tmp_path / "ds"), "--fps", "25", "--task", "wave"], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported 1 episodes, 3 frames" in out.stdout
    assert LeRobotDataset(tmp_path / "ds").tasks == ["wave"]


def fake_sim(n_frames: int = 6):
    """Stands in for rfm.sim.metaworld: same names, episodes with a deterministic success pattern."""
    def generate_episodes(tasks, episodes_per_task, cameras, size, seed, workers, progress, start_jitter=0,
                          steps_after_success=3, action_noise=0.0, noise_correlation=0.9):
        for task in tasks:
            for k in range(episodes_per_task):
                t = n_frames + k
                yield SimpleNamespace(
                    task=task, instruction=f"do {task}", seed=seed + k, success=k != 1,
                    frames={c: np.stack([square_frame(i, size, size) for i in range(t)]) for c in cameras},
                    state=np.full((t, 4), k, np.float32), action=np.full((t, 4), 0.5, np.float32))
    return SimpleNamespace(generate_episodes=generate_episodes, STATE_NAMES=["x", "y", "z", "grip"],
                           ACTION_NAMES=["dx", "dy", "dz", "dgrip"], CONTROL_HZ=80)


def test_generate_glue_with_fake_sim(tmp_path):
    res = write_metaworld(tmp_path / "mw", ["reach-v3", "push-v3"], episodes=3, cameras=["corner2"], size=32,
                          seed=5, progress=False, sim=fake_sim())
    assert res["kept"] == {"reach-v3": 2, "push-v3": 2} and res["tried"] == {"reach-v3": 3, "push-v3": 3}
    ds = LeRobotDataset(tmp_path / "mw")
    assert ds.num_episodes == 4 and ds.fps == 80 and ds.robot_type == "sawyer"
    assert ds.tasks == ["do reach-v3", "do push-v3"] and ds.state_names == ["x", "y", "z", "grip"]
    assert [ds.episode_meta(e)["env_task"] for e in range(4)] == ["reach-v3", "reach-v3", "push-v3", "push-v3"]
    assert [ds.episode_meta(e)["seed"] for e in range(4)] == [5, 7, 5, 7]  # episode k=1 failed and was dropped


def test_generate_cli_wiring(tmp_path, monkeypatch, capsys):
    sim = fake_sim()
    monkeypatch.setitem(sys.modules, "rfm.sim.metaworld", sim)
    import rfm.sim
    monkeypatch.setattr(rfm.sim, "metaworld", sim, raising=False)
    rc = main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--cameras", "corner2",
               "--size", "16", "--steps-after-success", "7", "--out", str(tmp_path / "ds")])
    assert rc == 0
    assert "reach-v3: kept 1/2 episodes" in capsys.readouterr().out
    ds = LeRobotDataset(tmp_path / "ds")
    assert ds.num_episodes == 1 and ds.episode_meta(0)["steps_after_success"] == 7  # the dataset says how it was cut
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--steps-after-success", "-1", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--steps-after-success must be in [0, 200] steps (got -1)" in capsys.readouterr().err
    # demos collected with noise on the executed motion say so per episode; a plain dataset has no such column
    assert "action_noise" not in ds.episode_meta(0)
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--cameras", "corner2",
                 "--size", "16", "--action-noise", "0.2", "--noise-correlation", "0.5",
                 "--out", str(tmp_path / "noisy")]) == 0
    meta = LeRobotDataset(tmp_path / "noisy").episode_meta(0)
    assert meta["action_noise"] == 0.2 and meta["noise_correlation"] == 0.5
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--noise-correlation", "1", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--noise-correlation in [0, 1) (got 0.0, 1.0)" in capsys.readouterr().err


def test_no_env_state_leaves_the_simulators_positions_out(tmp_path, monkeypatch):
    base = fake_sim()

    def generate_episodes(*args, **kw):  # the fake's episodes, with 2 environment-state values per frame
        for ep in base.generate_episodes(*args, **kw):
            ep.env_state = np.zeros((len(ep.action), 2), np.float32)
            yield ep

    sim = SimpleNamespace(**{**vars(base), "generate_episodes": generate_episodes, "ENV_STATE_NAMES": ["gx", "gy"]})
    with_env = write_metaworld(tmp_path / "env", ["reach-v3"], 1, ["corner2"], 16, progress=False, sim=sim)
    assert "observation.environment_state" in LeRobotDataset(with_env["out"]).features
    monkeypatch.setitem(sys.modules, "rfm.sim.metaworld", sim)
    import rfm.sim
    monkeypatch.setattr(rfm.sim, "metaworld", sim, raising=False)
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--cameras", "corner2",
                 "--size", "16", "--no-env-state", "--out", str(tmp_path / "field")]) == 0
    ds = LeRobotDataset(tmp_path / "field")  # only what a real robot records
    assert "observation.environment_state" not in ds.features and ds.num_episodes == 1


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("rfm.sim.metaworld") is None, reason="rfm.sim.metaworld not written yet")
def test_generate_real_metaworld_into_windows(tmp_path):
    """The real simulator: 2 episodes of reach-v3 at 64 px, one camera, through the CLI, then into windows."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "rfm.cli.main", "data", "generate", "metaworld", "--tasks", "reach-v3",
                          "--episodes", "2", "--cameras", "corner2", "--size", "64", "--out", str(tmp_path / "mw"),
                          "--workers", "1"], check=False, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "MUJOCO_GL": "osmesa", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    ds = LeRobotDataset(tmp_path / "mw")
    assert 1 <= ds.num_episodes <= 2 and ds.cameras == ["corner2"] and ds.image_shape("corner2") == (64, 64, 3)
    wd = WindowDataset(ds, interface_from_dataset(ds, chunk_size=8, image_size=(64, 64)))
    batch = collate_windows([wd[0], wd[len(wd) - 1]])
    assert batch["images"].shape == (2, 1, 3, 64, 64) and batch["actions"].shape == (2, 8, 4)
    assert batch["action_pad"][1, 1:].all() and batch["images"].float().std() > 1.0  # real rendered pixels
    # object and goal positions ride along as observation.environment_state (a training target, never an input)
    env_ft = ds.features["observation.environment_state"]
    assert env_ft["shape"] == [9] and env_ft["names"][6:] == ["goal_x", "goal_y", "goal_z"]
    assert "observation.environment_state" in ds.stats
    proj = np.asarray(env_ft["info"]["camera_projection"]["corner2"])  # where those points appear (keypoint targets)
    assert proj.shape == (3, 4)
    # the simulated robot's geometry is recorded as robot data: the camera's calibration and the hand in the state
    itf = interface_from_dataset(ds)
    np.testing.assert_allclose(itf.projections()[0], proj)
    assert itf.ee_position == ["hand_x", "hand_y", "hand_z"]
    # stored losslessly by default: a training frame is exactly what the policy will see live. (4:2:0 video turns
    # reach's one-pixel red goal into a faint smudge, and a policy trained on that never finds the goal.)
    from rfm.sim.metaworld import MetaWorldEnv

    assert ds.features[ds.camera_key("corner2")]["dtype"] == "image"
    env = MetaWorldEnv("reach-v3", ["corner2"], 64)
    live = env.reset(ds.episode_meta(0)["seed"])["images"]["corner2"]
    env.close()
    np.testing.assert_array_equal(ds.decode_episode(0, "corner2")[0], live)
    print(f"real metaworld generate + load: {time.time() - t0:.1f}s")


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("rfm.sim.metaworld") is None, reason="rfm.sim.metaworld not written yet")
def test_generate_with_start_jitter_records_varied_starts(tmp_path, capsys):
    """--start-jitter: episodes start from different hand poses, reproducibly, and the dataset says so."""
    from rfm.sim.metaworld import MetaWorldEnv, jittered_start

    rc = main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--size", "32",
               "--start-jitter", "10", "--workers", "1", "--out", str(tmp_path / "mw")])
    assert rc == 0
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--start-jitter", "-1", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--start-jitter must be in [0, 100] steps (got -1)" in capsys.readouterr().err
    ds = LeRobotDataset(tmp_path / "mw")
    assert ds.cameras == ["corner", "topview"]  # the default cameras see reach's goal
    starts = [ds.states[e.start] for e in ds.episodes]
    assert np.abs(starts[0][:3] - starts[1][:3]).max() > 1e-3
    meta = ds.episode_meta(0)
    assert meta["start_jitter"] == 10
    env = MetaWorldEnv("reach-v3", ["topview"], 32)
    np.testing.assert_array_equal(jittered_start(env, meta["seed"], 10)["state"], starts[0])
    env.close()


def test_generate_and_import_refuse_a_used_out_before_any_work(tmp_path, capsys, monkeypatch):
    """The writer would refuse it only at the end, after every episode was made: the CLI says so first."""
    import rfm.sim.generate

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    monkeypatch.setattr(rfm.sim.generate, "write_metaworld", lambda *a, **k: pytest.fail("generated"))
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(used)]) == 2
    assert f"--out {used} already exists and is not empty" in capsys.readouterr().err
    assert main(["data", "import-hdf5", str(tmp_path / "x.h5"), "--out", str(used), "--fps", "10", "--task", "t"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (used / "notes.txt").read_text() == "mine"


def test_an_existing_empty_out_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """The CLI's own check passes an empty --out; the dataset writer refuses it (it replaces nothing without
    --overwrite), and that refusal is one line too, not a FileExistsError traceback."""
    import rfm.sim.generate
    from rfm.data.lerobot import LeRobotDatasetWriter

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(rfm.sim.generate, "write_metaworld", lambda out, *a, **k: LeRobotDatasetWriter(
        out, fps=10, cameras={"front": (8, 8)}, state_names=["x"], action_names=["a"]))
    assert main(["data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty} already exists" in err and "Traceback" not in err
