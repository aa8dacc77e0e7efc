"""Recorder: per-session episodes, outcome labels and corrections, durable across an unclean stop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rfm.config import RobotInterface
from rfm.data.lerobot import LeRobotDataset
from rfm.runtime.recorder import Recorder

ITF = RobotInterface(cameras=["a", "b"], image_size=(32, 32), state_names=["x", "y"], action_names=["u", "v", "w"],
                     chunk_size=4, control_hz=10)


def _step(rng):
    return (rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8), rng.standard_normal(2).astype(np.float32),
            rng.standard_normal((4, 3)).astype(np.float32))


def test_sessions_become_episodes_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    rec = Recorder(tmp_path / "rec", ITF)
    sent = {}
    for sid in ("robot-1", "robot-2"):
        for t in range(5):
            images, state, actions = _step(rng)
            sent.setdefault(sid, []).append((images, state, actions))
            rec.record(sid, images, state, "open the drawer", actions, success=(t == 4),
                       episode_end=(sid == "robot-1" and t == 4))
    images, state, actions = _step(rng)
    rec.record("robot-3", images, state, "close the drawer", actions, correction=np.array([1.0, 2.0, 3.0]))
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 3 and ds.num_frames == 11
    assert sorted(ds.tasks) == ["close the drawer", "open the drawer"]
    sessions = [ds.episode_meta(e)["session"] for e in range(3)]
    assert sessions == ["robot-1", "robot-2", "robot-3"]
    start, stop = ds.episode_range(0)
    np.testing.assert_allclose(ds.actions[start:stop], np.stack([a[0] for _, _, a in sent["robot-1"]]), atol=1e-6)
    np.testing.assert_allclose(ds.states[start:stop], np.stack([s for _, s, _ in sent["robot-1"]]), atol=1e-6)
    assert ds.extras["next.success"][start:stop].reshape(-1).tolist() == [False] * 4 + [True]
    assert ds.extras["action_chunk"].shape == (11, 12)
    np.testing.assert_allclose(ds.actions[-1], [1.0, 2.0, 3.0])  # the correction is what gets learned from
    assert bool(ds.extras["is_correction"][-1])
    frame = ds.get_frame(start)
    assert frame["images"]["a"].shape == (32, 32, 3)


@pytest.mark.integration
def test_unclean_stop_keeps_every_finished_episode(tmp_path):
    script = textwrap.dedent(f"""
        import os, numpy as np
        from rfm.config import RobotInterface
        from rfm.runtime.recorder import Recorder
        itf = RobotInterface(cameras=["a", "b"], image_size=(32, 32), state_names=["x", "y"],
                             action_names=["u", "v", "w"], chunk_size=4, control_hz=10)
        rec = Recorder({str(tmp_path / 'rec')!r}, itf)
        rng = np.random.default_rng(0)
        for ep in range(3):
            for t in range(4):
                img = rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8)
                rec.record("r", img, np.zeros(2), "push", np.zeros((4, 3)), episode_end=(t == 3 and ep < 2))
        import time
        while rec.episodes_written < 2:
            time.sleep(0.05)
        os._exit(1)  # crash: the third episode was still open
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 1, out.stderr
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 2 and ds.num_frames == 8
    # and recording can continue into the same dataset
    rec = Recorder(tmp_path / "rec", ITF)
    images, state, actions = _step(np.random.default_rng(1))
    rec.record("r2", images, state, "push", actions, episode_end=True)
    rec.close()
    assert LeRobotDataset(tmp_path / "rec").num_episodes == 3


def test_a_recording_directory_this_process_may_not_write_is_refused_before_the_model_loads(tmp_path):
    """A volume mounted into rfm's image (which serves as uid 10001) owned by root: the start-up thread failed on
    mkdir with a traceback and the server stayed up unready; now `rfm serve`'s check names the directory."""
    from rfm.runtime.recorder import check_recording_dir
    from tests.unprivileged import run_unprivileged

    check_recording_dir(tmp_path / "rec", ITF)  # where it may: no error (and what it imports is imported)
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o555)  # read-only to its owner too (root is let through anyway: hence the other user)
    try:
        out = run_unprivileged(check_recording_dir, volume / "rec", ITF)
    finally:
        volume.chmod(0o755)
    assert out["error"] == "ValueError", out
    assert out["message"].startswith(f"--record {volume / 'rec'}: this process (uid ") and "may not write into" \
        in out["message"]


def test_a_recording_stopped_before_its_first_episode_starts_again(tmp_path):
    """A server stopped (or killed) before any robot finished an episode left meta/info.json alone; restarting on
    the same --record directory failed on the missing tasks.parquet, so a restarted pod crash-looped."""
    from rfm.data.errors import DatasetError
    from rfm.runtime.recorder import check_recording_dir

    Recorder(tmp_path / "rec", ITF).close()  # nothing recorded
    assert (tmp_path / "rec" / "meta" / "info.json").is_file()
    with pytest.raises(DatasetError, match="no episodes yet"):  # rfm data info says what it is
        LeRobotDataset(tmp_path / "rec")
    check_recording_dir(tmp_path / "rec", ITF)  # rfm serve's check before loading
    rec = Recorder(tmp_path / "rec", ITF)
    images, state, actions = _step(np.random.default_rng(0))
    rec.record("r", images, state, "push", actions, episode_end=True)
    rec.close()
    assert LeRobotDataset(tmp_path / "rec").num_episodes == 1
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "meta").mkdir()
    (tmp_path / "notes" / "meta" / "info.json").write_text('{"total_episodes": 0}')
    (tmp_path / "notes" / "mine.txt").write_text("keep me")  # not only a dataset's folders: never cleared
    with pytest.raises(Exception):  # noqa: B017 - what matters is that it is refused and kept
        Recorder(tmp_path / "notes", ITF)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("aspect", ["resize", "pad"])
def test_a_calibrated_robots_recording_carries_its_geometry(tmp_path, aspect):
    """The recorder writes the served interface's geometry into the dataset: a fine-tune on the recording alone
    reads back the robot's cameras (native sizes, aspect), the same model-input projections and end effector, so
    it serves the robot's native frames as the recording model did, though the frames are stored at its input size."""
    from dataclasses import replace

    from rfm.data.windows import interface_from_dataset

    K = [[30.0, 0, 31.5], [0, 30.0, 23.5], [0, 0, 1]]
    cal = {c: {"intrinsics": K, "extrinsics": [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2 + i]]}
           for i, c in enumerate(ITF.cameras)}
    itf = replace(ITF, state_names=["x", "y", "z"], native_sizes={"a": (48, 64), "b": (48, 64)}, calibration=cal,
                  ee_position=["x", "y", "z"], aspect=aspect)
    rec = Recorder(tmp_path / "rec", itf)
    rng = np.random.default_rng(0)
    rec.record("r", rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8), np.zeros(3, np.float32), "go",
               rng.standard_normal((4, 3)).astype(np.float32), episode_end=True)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.image_shape("a")[:2] == (32, 32)  # stored as the model saw them
    back = interface_from_dataset(ds, chunk_size=4)
    np.testing.assert_allclose(back.projections(), itf.projections(), atol=1e-9)
    assert back.ee_position == ["x", "y", "z"] and back.aspect == aspect
    assert back.native_sizes == {"a": (48, 64), "b": (48, 64)}
    with pytest.raises(ValueError, match="native sizes .* record into a new directory"):
        Recorder(tmp_path / "rec", replace(itf, native_sizes={"a": (96, 128), "b": (96, 128)}))


class _Held(Recorder):
    """A recorder whose writer thread waits for `go`: a recorder that has fallen behind."""

    def __init__(self, *a, **k) -> None:
        import threading

        self.go = threading.Event()
        super().__init__(*a, **k)

    def _run(self) -> None:
        self.go.wait()
        super()._run()


def test_a_dropped_frame_ends_its_episode_instead_of_leaving_a_hole(tmp_path):
    """Inference never waits for recording, so a full queue drops frames; the session's later frames then go to a
    new episode (SESSION~1), and every recorded episode is contiguous in time."""
    import time

    rng = np.random.default_rng(1)
    rec = _Held(tmp_path / "rec", ITF, max_queue=4)

    def frame(t):
        images, _, actions = _step(rng)
        return rec.record("arm", images, np.array([float(t), 0.0], np.float32), "pick", actions)

    assert [frame(t) for t in range(6)] == [True] * 4 + [False] * 2 and rec.dropped == 2
    assert not rec.room(1)  # a batch of ticks would be refused whole (503), not cut
    rec.end_episode("other", success=False)  # an end holds no frames: queued even now (it was dropped)
    assert rec.dropped == 2
    rec.go.set()
    while rec.backlog:
        time.sleep(0.01)
    assert rec.room(3) and all(frame(t) for t in range(6, 9))
    rec.end_episode("arm", success=True)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    runs = [ds.states[e.start:e.start + e.length, 0].tolist() for e in ds.episodes]
    assert runs == [[0, 1, 2, 3], [6, 7, 8]]


def test_sessions_that_lost_frames_are_forgotten_once_ended_or_gone(tmp_path):
    """The recorder remembers each session that lost a frame (its frames go on as SESSION~N) until it ends or goes
    quiet: before, every such session stayed for ever (a real server: 1,388 after 2,000 robots came and went)."""
    rng = np.random.default_rng(3)
    rec = _Held(tmp_path / "rec", ITF, max_queue=4, idle_timeout_s=0.05)

    def frame(sid):
        images, _, actions = _step(rng)
        return rec.record(sid, images, np.zeros(2, np.float32), "pick", actions)

    assert [frame("arm") for _ in range(4)] == [True] * 4
    assert not any(frame(f"robot-{i}") for i in range(50)) and not frame("arm")
    assert len(rec._epochs) == 51  # each of them lost a frame
    rec.go.set()
    while rec.backlog:
        time.sleep(0.01)
    assert frame("arm")  # arm~1: after its hole
    rec.end_episode("arm", success=True)
    assert "arm" not in rec._epochs  # ended: its next episode is "arm" again
    time.sleep(0.15)  # the 50 robots are gone for twice the idle timeout
    assert frame("arm") and rec._epochs == {} and rec._split == {}
    rec.close()
    sessions = [e.meta["session"] for e in LeRobotDataset(tmp_path / "rec").episodes]
    assert sessions[:2] == ["arm", "arm~1"] and sessions[-1] == "arm"


def test_an_episode_that_cannot_be_written_is_lost_alone(tmp_path, monkeypatch):
    """A write failure other than a full disk (an encoder's) while one episode is written: that episode is lost and
    counted, the episodes after it are written whole (the failed one's frames do not open the next), and the
    dataset loads."""
    import time

    rng = np.random.default_rng(2)
    rec = Recorder(tmp_path / "rec", ITF)
    real = rec.writer._write_data
    fail = {"next": False}

    def write_data(*a, **k):
        if fail["next"]:
            fail["next"] = False
            raise RuntimeError("encoder failed")
        return real(*a, **k)

    monkeypatch.setattr(rec.writer, "_write_data", write_data)
    for ep, n in enumerate((3, 4, 5)):
        fail["next"] = ep == 1
        for t in range(n):
            images, _, actions = _step(rng)
            rec.record("arm", images, np.array([float(10 * ep + t), 0.0], np.float32), "pick", actions)
        rec.end_episode("arm")
        while rec.episodes_written + rec.episodes_lost < ep + 1:  # written (or not) before the next one
            time.sleep(0.01)
    rec.close()
    assert rec.episodes_lost == 1 and rec.episodes_written == 2
    ds = LeRobotDataset(tmp_path / "rec")
    assert [ds.states[e.start:e.start + e.length, 0].tolist() for e in ds.episodes] == [[0, 1, 2], [20, 21, 22, 23, 24]]


def test_a_full_disk_keeps_the_episodes_that_end_and_writes_them_once_there_is_room(tmp_path, monkeypatch):
    """A full record disk lost every episode that ended until space was freed. They now wait in memory, in order,
    robots' ticks are refused (503: the robot holds them) meanwhile, and they are written once there is room."""
    import errno
    import time

    rng = np.random.default_rng(4)
    rec = _Held(tmp_path / "rec", ITF, use_videos=False)  # all three episodes queued before any is written
    real = rec.writer._write_data
    disk = {"full": True, "writes": 0}

    def write_data(*a, **k):
        disk["writes"] += 1
        if disk["full"] and disk["writes"] > 1:  # the disk fills up after the first episode
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(rec.writer, "_write_data", write_data)

    def episode(sid, first):
        for t in range(3):
            images, _, actions = _step(rng)
            assert rec.record_tick(sid, images, np.array([float(first + t), 0.0], np.float32), "pick", actions[0],
                                   index=t, episode_end=t == 2, success=True)

    episode("a", 0)
    episode("b", 10)
    episode("c", 20)
    rec.go.set()
    deadline = time.monotonic() + 10
    while rec.room(1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not rec.room(1) and rec.episodes_written == 1 and rec.episodes_lost == 0
    disk["full"] = False  # space freed
    while rec.episodes_written < 3 and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert rec.room(1)
    rec.close()
    assert rec.episodes_lost == 0
    ds = LeRobotDataset(tmp_path / "rec")
    assert [ds.states[e.start:e.stop, 0].tolist() for e in ds.episodes] == [[0, 1, 2], [10, 11, 12], [20, 21, 22]]


def test_an_episode_cut_by_a_server_restart_counts_as_the_one_the_robot_finished(tmp_path):
    """A server stopped mid-episode writes what it has (ended_by shutdown, outcome unknown); the robot goes on with
    the restarted server under the same session. A fine-tune keeping successes keeps both parts."""
    from rfm.data.recording import frame_mask, robot_outcomes

    rng = np.random.default_rng(0)

    def ticks(rec, n, end=False):
        for t in range(n):
            images, state, actions = _step(rng)
            last = end and t == n - 1
            rec.record_tick("arm", images, state, "open the drawer", actions[0], success=True if last else None,
                            episode_end=last)

    first = Recorder(tmp_path / "rec", ITF)
    ticks(first, 4)
    first.close()  # the server stops mid-episode
    again = Recorder(tmp_path / "rec", ITF)  # restarted, appending
    ticks(again, 3, end=True)
    again.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert [(e.meta["ended_by"], e.meta["outcome"]) for e in ds.episodes] == [("shutdown", "unknown"),
                                                                              ("robot", "success")]
    assert robot_outcomes(ds) == {0: "success", 1: "success"}
    assert frame_mask(ds, ("success",)).sum() == 7


def test_an_episode_cut_by_missing_ticks_counts_as_the_one_the_robot_finished(tmp_path):
    """Ticks that never arrived (the robot held, a batch lost for good) end the recorded episode there; the part
    before the gap, server-side or under SESSION~N, belongs to the episode the robot went on to finish."""
    from rfm.data.recording import frame_mask, robot_outcomes, summary

    rng = np.random.default_rng(0)
    rec = Recorder(tmp_path / "rec", ITF)
    for session, indices, success in (("arm", [0, 1, 2, 5, 6], True), ("cell", [0, 1], None),
                                      ("cell~1", [4, 5, 6], False)):
        for k, i in enumerate(indices):
            images, state, actions = _step(rng)
            last = k == len(indices) - 1
            rec.record_tick(session, images, state, "push", actions[0], success=success if last else None,
                            episode_end=last and success is not None, index=i)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    meta = [(e.meta["session"], e.meta["ended_by"], e.meta["first_tick"], e.length) for e in ds.episodes]
    assert meta == [("arm", "gap", 0, 3), ("arm", "robot", 5, 2), ("cell~1", "robot", 4, 3), ("cell", "shutdown", 0, 2)]
    assert robot_outcomes(ds) == {0: "success", 1: "success", 2: "failure", 3: "unknown"}
    assert frame_mask(ds, ("success",)).sum() == 5
    # "arm" from tick 5 goes on with its first part; "cell~1" from tick 4 is the start of one whose first part
    # ("cell") was written after it, at the stop: counted as started mid-episode
    assert summary(ds)["start_mid_episode"] == 1 and summary(ds)["parts"] == 4


def test_a_fleet_past_the_memory_budget_keeps_whole_episodes_on_disk(tmp_path, caplog):
    """Four robots with long episodes hold more frames than the recorder's memory budget: the heaviest sessions'
    frames move to a file in the recording, and every episode is written whole, frame for frame, once it ends."""
    from rfm.runtime.frame_spill import SPILL_DIR

    caplog.set_level("INFO", logger="rfm.recorder")
    rng = np.random.default_rng(0)
    frame_kb = 2 * 32 * 32 * 3 / 1024  # 6 kB
    rec = Recorder(tmp_path / "rec", ITF, use_videos=False, max_buffer_mb=60 * frame_kb / 1024)  # 60 frames
    assert rec.max_episode_frames == 30
    sent: dict[str, list] = {}
    for t in range(25):  # 4 x 25 frames open at once, budget 60
        while rec.backlog > 32:  # its queue holds 64 items here: a robot is told to send again (503) past it
            time.sleep(0.005)
        for sid in ("r0", "r1", "r2", "r3"):
            images, state, actions = _step(rng)
            sent.setdefault(sid, []).append((images, actions[0]))
            rec.record_tick(sid, images, state, "stack", actions[0], index=t, success=True if t == 24 else None,
                            episode_end=t == 24)
    rec.close()
    assert "frames go to" in caplog.text  # the budget was passed and frames went to disk
    spill = tmp_path / "rec" / SPILL_DIR
    assert rec.episodes_written == 4 and (not spill.exists() or not any(spill.iterdir()))
    ds = LeRobotDataset(tmp_path / "rec")
    assert sorted((e.meta["session"], e.length, e.meta["ended_by"]) for e in ds.episodes) == \
        [(s, 25, "robot") for s in ("r0", "r1", "r2", "r3")]
    for ep in ds.episodes:
        frames = sent[ep.meta["session"]]
        for i in (0, 12, 24):
            item = ds[ep.start + i]
            np.testing.assert_array_equal(item["images"]["a"], frames[i][0][0].transpose(1, 2, 0))
            np.testing.assert_allclose(item["action"], frames[i][1])


def test_an_episode_past_the_length_cap_and_a_full_disk_still_keep_the_robots_outcome(tmp_path, monkeypatch):
    """With no room on disk for the frames past the memory budget, the heaviest episode is written at once
    (ended_by length); its rest, and the episodes cut at the length cap, count with the outcome the robot reported."""
    from rfm.data.recording import frame_mask, robot_outcomes
    from rfm.runtime import frame_spill

    def no_room(self, images):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frame_spill.FrameSpill, "append", no_room)
    rng = np.random.default_rng(0)
    frame_kb = 2 * 32 * 32 * 3 / 1024
    rec = Recorder(tmp_path / "rec", ITF, use_videos=False, max_buffer_mb=30 * frame_kb / 1024)  # cap 15 frames
    for t in range(20):
        for sid in ("long", "other"):
            images, state, actions = _step(rng)
            last = sid == "long" and t == 19
            rec.record_tick(sid, images, state, "stack", actions[0], index=t, success=True if last else None,
                            episode_end=last)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    parts = [(e.meta["session"], e.meta["ended_by"]) for e in ds.episodes]
    assert parts.count(("long", "length")) >= 1 and parts.count(("long", "robot")) == 1
    assert sum(e.length for e in ds.episodes if e.meta["session"] == "long") == 20
    outcomes = robot_outcomes(ds)
    assert {outcomes[e.index] for e in ds.episodes if e.meta["session"] == "long"} == {"success"}
    assert frame_mask(ds, ("success",)).sum() == 20


def test_appending_in_another_frame_storage_says_the_recordings_own_is_kept(tmp_path, caplog):
    """rfm serve --record-images image on a recording stored as video appended video without a word."""
    rng = np.random.default_rng(0)
    first = Recorder(tmp_path / "rec", ITF, use_videos=False)
    images, state, actions = _step(rng)
    first.record_tick("arm", images, state, "push", actions[0], episode_end=True)
    first.close()
    caplog.set_level("WARNING", logger="rfm.recorder")
    Recorder(tmp_path / "rec", ITF, use_videos=True).close()
    assert "stores its frames as PNG images: new episodes are too (not as video)" in caplog.text


def test_parts_of_one_robot_episode_are_counted_once_whatever_the_session_key(tmp_path):
    """A server cut (gap, length) splits one robot episode into parts, under keys such as cell~1@arm-0 (the robot's
    session after lost ticks) or cell@arm-0~1 (the server's after dropped items): rfm data info counted each part
    as an episode of unknown outcome, and its start as mid-episode."""
    from rfm.data.recording import _base_session, robot_episodes, summary

    assert {_base_session(k) for k in ("cell@arm-0", "cell~1@arm-0", "cell@arm-0~2", "cell~1@arm-0~3")} == \
        {"cell@arm-0"}
    rng = np.random.default_rng(0)
    rec = Recorder(tmp_path / "rec", ITF, use_videos=False, model="m@1")
    for session, indices, end in (("cell@arm-0", [0, 1, 2], None), ("cell~1@arm-0", [5, 6], True),
                                  ("cell@arm-1", [0, 1], False)):
        for k, i in enumerate(indices):
            images, state, actions = _step(rng)
            last = k == len(indices) - 1
            rec.record_tick(session, images, state, "push", actions[0], index=i, episode_end=last and end is not None,
                            success=end if last else None)
        if session == "cell@arm-0":
            rec.end_episode(session, reason="gap")
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert robot_episodes(ds) == [[0, 1], [2]]
    info = summary(ds)
    assert info["outcomes"] == {"success": 1, "failure": 1, "unknown": 0} and info["parts"] == 3
    assert info["models"] == {"m@1": {"success": 1, "failure": 1}} and "start_mid_episode" not in info


def test_a_recording_started_before_tick_times_goes_on_without_them(tmp_path):
    """A --record directory an older rfm started has no tick_time column: a dataset's columns are the same in
    every episode, so new episodes are appended without it, and the recording still loads whole."""
    from rfm.constants import ACTION_CHUNK, ACTION_EXECUTED, CORRECTED, SUCCESS, TICK_TIME
    from rfm.data.lerobot import LeRobotDatasetWriter
    from rfm.data.recording import summary

    extra = {SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
             CORRECTED: {"dtype": "bool", "shape": [1], "names": None},
             ACTION_CHUNK: {"dtype": "float32", "shape": [12], "names": None},
             ACTION_EXECUTED: {"dtype": "float32", "shape": [3], "names": ITF.action_names}}
    old = LeRobotDatasetWriter(tmp_path / "rec", fps=10, robot_type="arm", cameras={"a": (32, 32), "b": (32, 32)},
                               state_names=ITF.state_names, action_names=ITF.action_names, use_videos=False,
                               incremental=True, extra_features=extra)
    rng = np.random.default_rng(0)
    for _ in range(3):
        old.add_frame(images={c: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for c in "ab"},
                      state=np.zeros(2, np.float32), action=np.zeros(3, np.float32), task="pick")
    old.save_episode(extra={SUCCESS: np.ones(3, bool), CORRECTED: np.zeros(3, bool),
                            ACTION_CHUNK: np.zeros((3, 12), np.float32), ACTION_EXECUTED: np.zeros((3, 3), np.float32)},
                     meta={"session": "old", "outcome": "success", "ended_by": "robot"})
    old.finalize()
    rec = Recorder(tmp_path / "rec", ITF, use_videos=False, model="m@2")
    for t in range(4):
        images, state, actions = _step(rng)
        rec.record_tick("arm", images, state, "pick", actions[0], index=t, time=100.0 + 0.1 * t,
                        episode_end=t == 3, success=True)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 2 and ds.num_frames == 7 and TICK_TIME not in ds.extras
    info = summary(ds)
    assert "timing" not in info
    assert info["models"] == {"unknown": {"success": 1}, "m@2": {"success": 1}}  # every episode counted


def test_an_episode_recorded_from_requests_at_a_fraction_of_the_rate_is_told(tmp_path, caplog):
    """openpi's robots execute several actions per request: recorded per request, an episode holds one frame per
    chunk. The request times show it, and the server's log says so once."""
    rng = np.random.default_rng(0)
    with caplog.at_level("WARNING", logger="rfm.recorder"):
        for name, every in (("every-tick", 1.0), ("every-4", 4.0)):
            rec = Recorder(tmp_path / name, ITF)
            for t in range(10):
                images, state, actions = _step(rng)
                rec.record("arm", images, state, "pick", actions, episode_end=t == 9, arrived=50.0 + t * every / 10)
            rec.close()
            when = LeRobotDataset(tmp_path / name).extras["tick_time"].reshape(-1)
            np.testing.assert_allclose(when, np.arange(10) * every / 10, atol=1e-5)
    said = [r.message for r in caplog.records if "asked for a chunk every" in r.message]
    assert len(said) == 1 and "every 4.0 control periods" in said[0] and "4.0x faster" in said[0]


def test_an_episode_mixing_requests_and_ticks_is_untimed(tmp_path):
    """A request's time is the server's clock and a tick's the robot's: an episode holding both has no one clock,
    and its intervals would be nonsense (a robot's client.act() then its executor's ticks showed a 152 ms stall)."""
    rng = np.random.default_rng(0)
    rec = Recorder(tmp_path / "rec", ITF)
    images, state, actions = _step(rng)
    rec.record("arm", images, state, "pick", actions, arrived=5.0)
    for t in range(3):
        images, state, actions = _step(rng)
        rec.record_tick("arm", images, state, "pick", actions[0], index=t, time=9000.0 + 0.1 * t, episode_end=t == 2)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_frames == 4 and np.all(ds.extras["tick_time"] == -1.0)
