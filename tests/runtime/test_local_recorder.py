"""LocalRecorder: a robot running its model itself records, tick by tick, the dataset a recording server writes."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.client import ChunkExecutor
from rfm.constants import ACTION_EXECUTED, CORRECTED, TICK_TIME
from rfm.data.lerobot import LeRobotDataset
from rfm.data.recording import robot_outcomes, tick_timing
from rfm.runtime import LocalRecorder
from tests.serving.helpers import load_tiny, make_checkpoint


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return load_tiny(make_checkpoint(tmp_path_factory.mktemp("local-recorder") / "tiny"))


def _obs(rng, size=(64, 64)) -> dict:
    return {"images": {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in ("front", "wrist")},
            "state": rng.standard_normal(3).astype(np.float32), "instruction": "pick up the cube"}


def test_a_robot_running_its_own_model_records_each_tick_it_executed(runner, tmp_path):
    rng = np.random.default_rng(0)
    executed, states, corrected = [], [], {}
    with LocalRecorder(tmp_path / "field", runner, session_id="arm-1") as rec, \
            ChunkExecutor(runner, recorder=rec, action_steps=4) as executor:  # its predict
        for tick in range(21):  # 4 actions per chunk: ticks 0-20 take six chunks
            obs = _obs(rng)
            action = executor.step(obs, t=0.1 * tick + (0.25 if tick >= 15 else 0.0))  # tick 15 came late
            if tick == 3:  # the robot's own limit: what it executed is what the record holds
                action = np.clip(action, -0.01, 0.01)
                executor.executed(action)
            if tick == 7:  # an operator takes over
                executor.correct(np.array([0.5, -0.5], np.float32), executed=True)
                action, corrected[7] = np.array([0.5, -0.5], np.float32), True
            executed.append(action)
            states.append(obs["state"])
        executor.end_episode(success=True)
        for _ in range(5):  # a second episode the robot never ends: written as it left it when the recorder closes
            executed.append(executor.step(_obs(rng)))
    ds = LeRobotDataset(tmp_path / "field")
    assert ds.num_episodes == 2 and [ds.episode_range(e)[1] - ds.episode_range(e)[0] for e in (0, 1)] == [21, 5]
    np.testing.assert_allclose(ds.extras[ACTION_EXECUTED], np.stack(executed), atol=1e-6)
    np.testing.assert_allclose(ds.states[:21], np.stack(states), atol=1e-6)
    assert np.flatnonzero(ds.extras[CORRECTED].reshape(-1)).tolist() == [7]
    meta = [ds.episode_meta(e) for e in (0, 1)]
    assert [m["session"] for m in meta] == ["arm-1", "arm-1"]
    assert [m["ended_by"] for m in meta] == ["robot", "closed"] and meta[0]["model"].startswith(runner.model_id + "@")
    assert ds.extras["next.success"].reshape(-1)[:21].tolist() == [False] * 20 + [True]
    times = ds.extras[TICK_TIME].reshape(-1)
    np.testing.assert_allclose(times[:21], [0.1 * t + (0.25 if t >= 15 else 0.0) for t in range(21)], atol=1e-5)
    assert tick_timing(ds)["late_ticks"] == 1
    assert ds.get_frame(0)["images"]["front"].shape == (64, 64, 3)
    # the robot's next run adds to the recording; its first episode is its own, not the rest of the one left open
    with LocalRecorder(tmp_path / "field", runner, session_id="arm-1", real_time=False) as rec:
        for _ in range(3):
            rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.end_episode(success=True)
    ds = LeRobotDataset(tmp_path / "field")
    assert ds.num_episodes == 3 and robot_outcomes(ds) == {0: "success", 1: "unknown", 2: "success"}


def test_a_tick_the_robot_held_ends_the_recorded_episode_and_nothing_bridges_it(runner, tmp_path):
    rng = np.random.default_rng(1)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:
        for _ in range(3):
            rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.skip()  # step() raised at this tick: the robot held
        for _ in range(2):
            rec.add(_obs(rng), np.ones(2, np.float32))
        rec.end_episode(success=False)
    ds = LeRobotDataset(tmp_path / "field")
    assert [ds.episode_range(e)[1] - ds.episode_range(e)[0] for e in range(ds.num_episodes)] == [3, 2]
    assert [ds.episode_meta(e)["ended_by"] for e in range(2)] == ["gap", "robot"]
    assert (ds.extras[TICK_TIME] == -1).all()  # a simulated robot's ticks carry no time


def test_recording_the_wrong_robot_loses_the_tick_not_the_robot(runner, tmp_path):
    rng = np.random.default_rng(2)
    with LocalRecorder(tmp_path / "field", runner) as rec:
        rec.add({**_obs(rng), "state": np.zeros(5, np.float32)}, np.zeros(2, np.float32))
        rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.flush()
        assert rec.lost == 1 and "state has 5 values" in rec.last_error
    with pytest.raises(RuntimeError, match="closed"):
        rec.add(_obs(rng), np.zeros(2, np.float32))
    assert LeRobotDataset(tmp_path / "field").num_frames == 1


def test_a_program_that_ends_without_closing_its_recorder_still_writes_what_it_recorded(tmp_path):
    """The recorder's threads are daemons: a script that ended after end_episode() (no close, no with) lost the
    episode still being written, and the one it left open."""
    import subprocess
    import sys
    import textwrap

    from tests.serving.helpers import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "tiny")
    script = textwrap.dedent(f"""
        import numpy as np
        from rfm.runtime import LocalRecorder, load_runner
        runner = load_runner({str(ckpt)!r}, backend="torch", device="cpu")
        rec = LocalRecorder({str(tmp_path / "field")!r}, runner, use_videos=True)
        obs = {{"images": {{c: np.zeros((64, 64, 3), np.uint8) for c in ("front", "wrist")}},
                "state": np.zeros(3, np.float32), "instruction": "pick up the cube"}}
        for episode in range(2):
            for _ in range(30):
                rec.add(obs, np.zeros(2, np.float32))
            if episode == 0:
                rec.end_episode(success=True)
    """)
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(30, "robot"), (30, "closed")]
