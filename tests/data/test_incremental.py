"""Incremental writing: every saved episode is durable; a killed recorder loses only the unfinished episode."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter

from .conftest import square_frame

RECORDER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from rfm.data.lerobot import LeRobotDatasetWriter
    root, use_videos = sys.argv[1], sys.argv[2] == "1"
    w = LeRobotDatasetWriter(root, fps=10, cameras={"cam": (32, 32)}, state_names=["a", "b"], action_names=["c"],
                             use_videos=use_videos, incremental=True)
    for ep in range(3):
        for i in range(8):
            img = np.zeros((32, 32, 3), np.uint8); img[i:i + 6, i:i + 6] = 255
            w.add_frame(images={"cam": img}, state=[ep, i], action=[i * 0.5], task=f"task {ep}")
        if ep < 2:
            w.save_episode()
    print("recording episode 2", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the process dies mid-episode: no finalize, no cleanup
""")


@pytest.mark.integration
@pytest.mark.parametrize("use_videos", [True, False])
def test_killed_recorder_keeps_finished_episodes(tmp_path, use_videos):
    root = tmp_path / "rec"
    proc = subprocess.run([sys.executable, "-c", RECORDER, str(root), "1" if use_videos else "0"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 2 and ds.num_frames == 16 and ds.tasks == ["task 0", "task 1"]
    np.testing.assert_array_equal(ds.states[8:], np.stack([[1, i] for i in range(8)]).astype(np.float32))
    assert np.abs(ds.get_frame(11)["images"]["cam"].astype(int) - square_frame_32(3)).mean() < 3.0

    # reopen and continue: the next episode gets index 2, and the whole dataset is valid
    w = LeRobotDatasetWriter.append(root)
    for i in range(5):
        w.add_frame(images={"cam": square_frame_32(i)}, state=[9, i], action=[1.0], task="task 0")
    assert w.save_episode() == 2
    w.finalize()
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 3 and ds.num_frames == 21 and ds.episode_range(2) == (16, 21)
    assert ds.instruction(20) == "task 0" and ds.stats["action"]["count"].tolist() == [21]
    assert np.abs(ds.get_frame(19)["images"]["cam"].astype(int) - square_frame_32(3)).mean() < 3.0


def square_frame_32(i: int) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[i:i + 6, i:i + 6] = 255
    return img


def test_each_episode_own_files_and_readable_while_recording(tmp_path):
    root = tmp_path / "rec"
    w = LeRobotDatasetWriter(root, fps=10, cameras={"cam": (16, 16)}, state_names=["a"], action_names=["b"],
                             incremental=True)
    for ep in range(2):
        for i in range(4):
            w.add_frame(images={"cam": square_frame(i, 16, 16)}, state=[i], action=[ep], task="t")
        w.save_episode()
        ds = LeRobotDataset(root)  # readable after every episode, without finalize
        assert ds.num_episodes == ep + 1
    assert sorted(p.name for p in (root / "data/chunk-000").iterdir()) == ["file-000.parquet", "file-001.parquet"]
    assert len(list((root / "videos/observation.images.cam/chunk-000").iterdir())) == 2
    w.add_frame(images={"cam": square_frame(0, 16, 16)}, state=[0], action=[0], task="t")
    w.abort()  # drops only the unsaved frame
    assert LeRobotDataset(root).num_frames == 8


def test_orphan_files_of_uncommitted_episode_are_removed(tmp_path):
    root = tmp_path / "rec"
    w = LeRobotDatasetWriter(root, fps=10, state_names=["a"], action_names=["b"], incremental=True)
    w.add_frame(state=[0], action=[0], task="t")
    w.save_episode()
    orphan = root / "data/chunk-000/file-001.parquet"  # as if killed after the data file, before the metadata
    orphan.write_bytes((root / "data/chunk-000/file-000.parquet").read_bytes())
    assert LeRobotDataset(root).num_episodes == 1  # the reader follows the episode metadata, not a glob
    LeRobotDatasetWriter.append(root).abort()
    assert not orphan.exists()


def test_save_from_background_thread(tmp_path):
    root = tmp_path / "rec"
    w = LeRobotDatasetWriter(root, fps=10, cameras={"cam": (16, 16)}, state_names=["a"], action_names=["b"],
                             incremental=True)
    errors = []

    def record(ep: int) -> None:
        try:
            for i in range(3):
                w.add_frame(images={"cam": square_frame(i, 16, 16)}, state=[i], action=[ep], task="t")
            w.save_episode()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    for ep in range(2):
        th = threading.Thread(target=record, args=(ep,))
        th.start()
        th.join()
    assert not errors
    w.finalize()
    assert LeRobotDataset(root).num_episodes == 2


@pytest.mark.integration
def test_atomic_writer_killed_leaves_no_dataset(tmp_path):
    root = tmp_path / "gen"
    script = RECORDER.replace("incremental=True", "incremental=False")
    proc = subprocess.run([sys.executable, "-c", script, str(root), "1"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not root.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".gen")]
    assert leftovers  # the killed process' temp dir; the next writer for the same root removes it
    LeRobotDatasetWriter(root, fps=10, action_names=["a"]).abort()
    assert [p for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("kind", ["video", "image"])
def test_append_to_dataset_written_by_lerobot(tmp_path, kind):
    from .conftest import FIXTURES

    if not FIXTURES.exists():
        pytest.skip("shared/fixtures not present")
    import shutil

    root = tmp_path / kind
    shutil.copytree(FIXTURES / kind, root)
    before = LeRobotDataset(root)
    w = LeRobotDatasetWriter.append(root)
    for i in range(6):
        img = square_frame(i, 96, 96)
        w.add_frame(images={"top": img, "wrist": img[::-1]}, state=[i, 0, 0, 0], action=[0, 0, 0, i], task="press the button")
    assert w.save_episode() == 3
    w.finalize()
    ds = LeRobotDataset(root)
    assert ds.num_episodes == 4 and ds.num_frames == 126 and ds.tasks == before.tasks
    np.testing.assert_array_equal(ds.states[:120], before.states)
    assert ds.instruction(125) == "press the button" and ds.episode_range(3) == (120, 126)
    assert np.abs(ds.get_frame(123)["images"]["top"].astype(int) - square_frame(3, 96, 96)).mean() < 3.0
    assert np.abs(ds.get_frame(5)["images"]["top"].astype(int) - before.get_frame(5)["images"]["top"]).max() == 0
    if kind == "video":  # new files are in the dataset's own codec, so info.json's video.codec stays true
        from rfm.data.video import probe

        codecs = {probe(p)["video.codec"] for p in (root / "videos").rglob("*.mp4")}
        assert codecs == {before.features["observation.images.top"]["info"]["video.codec"]}


def test_append_encoder_follows_the_dataset():
    """An append keeps the dataset's codec; one PyAV cannot write falls back to the default, said in the log."""
    from rfm.data import video

    feats = {"observation.images.top": {"dtype": "video", "info": {"video.codec": "h264"}},
             "action": {"dtype": "float32"}}
    assert video.encoder_for_dataset(feats, None) == "libx264"
    assert video.encoder_for_dataset(feats, "mpeg4") == "mpeg4"
    feats["observation.images.top"]["info"]["video.codec"] = "prores"
    logger = logging.getLogger("rfm.data.video")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        assert video.encoder_for_dataset(feats, None) == video.resolve_encoder(None)
    finally:
        logger.removeHandler(handler)
    assert any("prores" in r.getMessage() for r in records)


@pytest.mark.parametrize("incremental", [True, False])
def test_episode_metadata_rolls_over_and_stats_merge_exactly(tmp_path, incremental):
    """A long recording: metadata files hold at most episodes_per_meta_file episodes, earlier ones are never
    rewritten, and the running stats equal stats over all frames (min, max, mean, std, count)."""
    root = tmp_path / "long"
    rng = np.random.default_rng(0)
    w = LeRobotDatasetWriter(root, fps=10, state_names=["a", "b"], action_names=["c"], use_videos=False,
                             incremental=incremental, episodes_per_meta_file=3)
    states, first_file = [], None
    for ep in range(8):
        n = int(rng.integers(2, 9))
        s = rng.normal(ep, 1 + ep, (n, 2)).astype(np.float32)
        for x in s:
            w.add_frame(state=x, action=x[:1] * 2, task=f"task {ep % 2}")
        w.save_episode()
        states.append(s)
        meta = sorted((root / "meta" / "episodes").glob("*/*.parquet")) if incremental else []
        if incremental and ep == 2:
            first_file = (meta[0], meta[0].stat().st_mtime_ns, meta[0].read_bytes())
    w.finalize()
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    assert [f.name for f in files] == ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    if first_file:  # full files are final: saving episodes 3..7 did not touch the first
        assert (first_file[0].stat().st_mtime_ns, first_file[0].read_bytes()) == first_file[1:]
    ds = LeRobotDataset(root)
    allx = np.concatenate(states).astype(np.float64)
    assert ds.num_episodes == 8 and ds.num_frames == len(allx)
    np.testing.assert_array_equal(ds.states, np.concatenate(states))
    got = ds.stats["observation.state"]
    np.testing.assert_allclose(got["mean"], allx.mean(0), rtol=1e-9)
    np.testing.assert_allclose(got["std"], allx.std(0), rtol=1e-9)
    np.testing.assert_allclose(got["min"], allx.min(0))
    np.testing.assert_allclose(got["max"], allx.max(0))
    assert got["count"].tolist() == [len(allx)]
    if not incremental:  # written in one go: quantiles over all frames
        np.testing.assert_allclose(got["q50"], np.quantile(allx, 0.5, axis=0), rtol=1e-6)

    # reopened, new episodes go on in the newest (open) file and the stats keep merging
    w = LeRobotDatasetWriter.append(root)
    extra = rng.normal(-5, 3, (6, 2)).astype(np.float32)
    for x in extra:
        w.add_frame(state=x, action=x[:1], task="task 0")
    assert w.save_episode() == 8
    w.finalize()
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    assert len(files) == 3  # episode 8 joined file-002 (episodes 6, 7, 8)
    ds = LeRobotDataset(root)
    allx = np.concatenate([allx, extra.astype(np.float64)])
    assert ds.num_episodes == 9 and ds.episode_range(8) == (len(allx) - 6, len(allx))
    np.testing.assert_allclose(ds.stats["observation.state"]["mean"], allx.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["observation.state"]["std"], allx.std(0), rtol=1e-6)
