"""LocalRecorder: a robot running its model itself records, tick by tick, the dataset a recording server writes."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.client import ChunkExecutor
from rfm.constants import ACTION_CHUNK, ACTION_EXECUTED, CORRECTED, TICK_TIME
from rfm.data.lerobot import LeRobotDataset
from rfm.data.recording import robot_episodes, robot_outcomes, tick_timing
from rfm.runtime import LocalRecorder
from tests.serving.helpers import load_tiny, make_checkpoint


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return load_tiny(make_checkpoint(tmp_path_factory.mktemp("local-recorder") / "tiny"))


def _obs(rng, size=(64, 64)) -> dict:
    return {"images": {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in ("front", "wrist")},
            "state": rng.standard_normal(3).astype(np.float32), "instruction": "pick up the cube"}


def _robot_program(tmp_path, body: str, **recorder_kw):
    """Run a robot program in its own process: a tiny runner, `rec` a LocalRecorder into tmp_path/field, `obs` an
    observation, then `body`; the finished process."""
    import subprocess
    import sys
    import textwrap

    ckpt = make_checkpoint(tmp_path / "tiny")
    script = textwrap.dedent(f"""
        import os, time
        import numpy as np
        from rfm.runtime import LocalRecorder, load_runner
        runner = load_runner({str(ckpt)!r}, backend="torch", device="cpu")
        rec = LocalRecorder({str(tmp_path / "field")!r}, runner, **{recorder_kw!r})
        obs = {{"images": {{c: np.zeros((64, 64, 3), np.uint8) for c in ("front", "wrist")}},
                "state": np.zeros(3, np.float32), "instruction": "pick up the cube"}}
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)


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
        for call in (lambda: rec.executed(np.zeros(2)), lambda: rec.correct(np.zeros(2))):
            with pytest.raises(RuntimeError, match=r"\(\) before any add\(\): no tick to change"):
                call()
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
    r = _robot_program(tmp_path, """
        for episode in range(2):
            for _ in range(30):
                rec.add(obs, np.zeros(2, np.float32))
            if episode == 0:
                rec.end_episode(success=True)
    """, use_videos=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(30, "robot"), (30, "closed")]


def test_a_frame_the_model_would_refuse_is_not_recorded_stretched(runner, tmp_path):
    """The recorder fitted any frame size (the server's --resize-images): a 2x2 frame was stored as a black 64 x 64
    one. It takes the frames the runner takes; another is lost, and the recorded episode ends there."""
    rng = np.random.default_rng(3)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:
        rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.add({**_obs(rng), "images": {**_obs(rng)["images"], "wrist": np.zeros((2, 2, 3), np.uint8)}},
                np.zeros(2, np.float32))
        rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.end_episode(success=True)
        assert rec.lost == 1 and "'wrist' is 2x2" in rec.last_error
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(1, "gap"), (1, "robot")]


def test_a_robot_that_crashed_mid_episode_does_not_lend_its_cut_part_the_next_run_s_outcome(runner, tmp_path):
    """An episode cut at a held tick (gap), whose program then died, was taken for the first part of the next run's
    first episode, and trained on as that episode's success."""
    r = _robot_program(tmp_path, """
        for _ in range(3):
            rec.add(obs, np.zeros(2, np.float32))
        rec.skip()  # held
        rec.add(obs, np.zeros(2, np.float32))
        rec.flush()
        while rec.episodes_written < 1:  # the part before the hole is written
            time.sleep(0.01)
        os._exit(1)  # killed: the part after the hole is lost with the process
    """, real_time=False)
    assert r.returncode == 1, r.stderr[-2000:]
    rng = np.random.default_rng(4)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:  # the next run, from its tick 0
        for _ in range(2):
            rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.end_episode(success=True)
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(3, "gap"), (2, "robot")]
    assert robot_episodes(ds) == [[0], [1]] and robot_outcomes(ds) == {0: "unknown", 1: "success"}




def test_a_directory_it_cannot_record_into_is_refused_by_name_and_left_as_it_was(runner, tmp_path):
    """A directory of other files, or another robot's dataset, is refused with a message for a LocalRecorder (not the
    server's --record), and no lock file is left in it; two recorders on one directory: the second is refused."""
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="notes: exists and is not a LeRobot dataset"):
        LocalRecorder(other, runner)
    assert sorted(p.name for p in other.iterdir()) == ["readme.txt"]
    with LocalRecorder(tmp_path / "field", runner), \
            pytest.raises(FileExistsError, match="or a robot's LocalRecorder"):
        LocalRecorder(tmp_path / "field", runner)


def test_a_bgr_frame_s_rgb_view_is_recorded_as_that_view(runner, tmp_path):
    """ROBOTS.md's BGR fix, frame[..., ::-1], is a view numpy copies byte by byte (2.3 ms a 480 x 640 frame in the
    control loop); it is copied as its buffer and recorded as the view shows it."""
    from rfm.client.frames import snapshot

    bgr = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    expected = bgr[..., ::-1].copy()
    copy = snapshot(bgr[..., ::-1])
    bgr[:] = 0  # the driver's next frame
    np.testing.assert_array_equal(copy, expected)
    rgb = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with LocalRecorder(tmp_path / "field", runner, real_time=False, use_videos=False) as rec:
        rec.add({"images": {"front": rgb[..., ::-1][..., ::-1], "wrist": rgb.copy()[..., ::-1]},
                 "state": np.zeros(3, np.float32), "instruction": "pick"}, np.zeros(2, np.float32))
    frame = LeRobotDataset(tmp_path / "field").get_frame(0)["images"]
    np.testing.assert_array_equal(frame["front"], rgb)
    np.testing.assert_array_equal(frame["wrist"], rgb[..., ::-1])


def test_an_executor_of_a_runner_clips_to_the_limits_and_follows_the_cards_actions_per_request(tmp_path):
    """A robot running its model itself clipped with a lambda around predict, behind which the executor could not
    see the card's recommended actions per request; given the runner and the limits, it does both."""
    from rfm.checkpoint import update_meta
    from rfm.runtime import ActionLimits

    ckpt = make_checkpoint(tmp_path / "tiny")
    update_meta(ckpt, "execution", {"action_steps": 2})
    runner = load_tiny(ckpt)
    limits = ActionLimits(np.full(2, -0.001), np.full(2, 0.001), ["vx", "vy"], "test")
    rng = np.random.default_rng(7)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec, \
            ChunkExecutor(runner, limits=limits, recorder=rec) as executor:
        actions = [executor.step(_obs(rng)) for _ in range(12)]
        assert executor._execution["action_steps"] == 2 and executor.clipped >= 1  # the card, read off the runner
        executor.end_episode(success=True)
    assert np.abs(np.stack(actions)).max() <= 0.001 + 1e-7
    ds = LeRobotDataset(tmp_path / "field")
    assert np.abs(ds.extras[ACTION_EXECUTED]).max() <= 0.001 + 1e-7
    assert np.abs(ds.extras[ACTION_CHUNK]).max() <= 0.001 + 1e-7  # the chunk as clipped, as a server records it


def test_episodes_name_an_export_s_precision_so_fp32_and_int8_runs_compare(tmp_path):
    """An fp32 and an int8 export of one checkpoint recorded the same model name: rfm data info's by-model counts
    could not tell the two apart in the field."""
    runner = load_tiny(make_checkpoint(tmp_path / "tiny"))
    runner.precision = "int8"  # as an int8 export's runner says (rfm.runtime.export_runner)
    rng = np.random.default_rng(8)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:
        rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.end_episode(success=True)
    model = LeRobotDataset(tmp_path / "field").episode_meta(0)["model"]
    assert model == f"{runner.model_id}@{runner.model_version}/int8"


def test_an_ended_episode_is_on_disk_when_end_episode_returns(runner, tmp_path):
    """A notebook or a robot program that reads its recording after end_episode() found the episode missing: the
    writer had it, not yet the disk."""
    rng = np.random.default_rng(9)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:
        for episode in range(2):
            for _ in range(4):
                rec.add(_obs(rng), np.zeros(2, np.float32))
            rec.end_episode(success=True)
            assert LeRobotDataset(tmp_path / "field").num_episodes == episode + 1


def test_a_writer_that_falls_behind_holds_the_robot_s_ticks_rather_than_dropping_them(runner, tmp_path, monkeypatch):
    """The server's recorder drops what its queue has no room for (the robot holds its ticks and sends them again);
    on the robot there is no sending again, so the ticks wait for the writer, in the robot's backlog."""
    import rfm.runtime.local_recorder as local

    rng = np.random.default_rng(10)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec:
        busy = {"calls": 0}
        room = rec.recorder.room

        def slow_writer(n):  # no room for the first 50 looks (a slow disk), then room again
            busy["calls"] += 1
            return busy["calls"] > 50 and room(n)

        monkeypatch.setattr(rec.recorder, "room", slow_writer)
        for _ in range(6):
            rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.end_episode(success=True)
        assert rec.lost == 0 and busy["calls"] > 50
        monkeypatch.setattr(local, "WRITER_WAIT_S", 0.05)
        monkeypatch.setattr(rec.recorder, "room", lambda n: False)  # a full disk: given up on after the wait
        monkeypatch.setattr(rec.recorder, "record_tick", lambda *a, **k: False)
        rec.add(_obs(rng), np.zeros(2, np.float32))
        rec.flush(timeout=5)
        assert rec.lost == 1 and "writer has been behind" in rec.last_error
    assert LeRobotDataset(tmp_path / "field").episode_range(0) == (0, 6)


def test_a_bad_frame_raises_on_its_own_tick_not_the_next_good_one(runner, tmp_path):
    """A robot running its model itself sent a bad frame with a prefetch: step() returned normally at that tick and
    raised the model's error at the next, whose frame was fine, so the robot held on a good tick."""
    import time

    from rfm.runtime import ObservationError

    rng = np.random.default_rng(11)
    with LocalRecorder(tmp_path / "field", runner, real_time=False) as rec, \
            ChunkExecutor(runner, recorder=rec, prefetch_steps=4) as executor:  # chunk 8: prefetches at tick 4
        for _ in range(4):
            executor.step(_obs(rng))
            time.sleep(0.05)  # a 20 Hz robot: the round trip is well inside the 4 ticks of lead
        bad = {**_obs(rng), "images": {**_obs(rng)["images"], "front": np.zeros((32, 32, 3), np.uint8)}}
        with pytest.raises(ObservationError, match="'front' is 32x32"):
            executor.step(bad)  # tick 4 sends the prefetch: refused here, not at tick 5
        assert executor.requests == 1
        for _ in range(3):
            executor.step(_obs(rng))  # the good ticks after it run
            time.sleep(0.05)
        executor.end_episode(success=True)
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"]) for e in ds.episodes] == [(4, "gap"), (3, "robot")]
