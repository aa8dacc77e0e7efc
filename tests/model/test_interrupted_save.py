"""A writer killed part way (SIGKILL, power loss) leaves nothing a user must clean up and loses no checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from rfm import RFMPolicy
from rfm.data.writer import LeRobotDatasetWriter

KILLED_MIDWAY = """
import os, sys
from pathlib import Path
from rfm.files import temp_dir_for
target = Path(sys.argv[1])
tmp = temp_dir_for(target)
(tmp / "model.safetensors").write_bytes(b"half")
if sys.argv[2] == "between-renames":  # the previous directory moved aside, the new one not yet in place
    os.replace(target, target.parent / f".{target.name}.old-{os.getpid()}-deadbeef")
os.kill(os.getpid(), 9)
"""


def kill_a_writer_of(target, when: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_MIDWAY, str(target), when], check=False,
                          capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()


def test_a_checkpoint_save_killed_between_its_renames_is_put_back_when_read(tmp_path, small_interface):
    """Replacing a checkpoint takes two renames; killed between them, there was no checkpoint at its path, only a
    hidden .old directory. Reading it puts the previous checkpoint back, and the next save leaves no debris."""
    path = tmp_path / "last"
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    weights = (path / "model.safetensors").read_bytes()
    kill_a_writer_of(path, "between-renames")
    assert not path.exists()
    assert (RFMPolicy.from_pretrained(path) is not None) and (path / "model.safetensors").read_bytes() == weights
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_a_killed_writers_temp_directory_is_removed_by_the_next_save(tmp_path, small_interface):
    path = tmp_path / "ckpt"
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    kill_a_writer_of(path, "writing")
    assert len(list(tmp_path.glob(".ckpt.tmp-*"))) == 1  # a real half-written leftover
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-x"  # a writer still running (this test's parent): not touched
    live.mkdir()
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", live.name])


def test_another_containers_save_under_way_is_left_alone(tmp_path, small_interface):
    """Containers sharing a volume each number their processes from 1: a save in one took another container's save
    under way (same PID) for its own leftover and deleted it, or restored the previous checkpoint from between its
    renames. A directory named by another host is never touched; this host's, of this process, still is."""
    from rfm.files import _host_tag

    path = tmp_path / "ckpt"
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    other = "h" + ("0" * 8 if _host_tag() != "h" + "0" * 8 else "1" * 8)
    theirs = [tmp_path / f".ckpt.tmp-{os.getpid()}-{other}-x", tmp_path / f".ckpt.old-{os.getpid()}-{other}-y"]
    ours = tmp_path / f".ckpt.tmp-{os.getpid()}-{_host_tag()}-z"  # this process, not writing it: left by a crash
    for d in (*theirs, ours):
        d.mkdir()
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", *(d.name for d in theirs)])


def test_a_dataset_writer_cleans_up_after_a_killed_one(tmp_path):
    root = tmp_path / "demos"
    kill_a_writer_of(root, "writing")
    with LeRobotDatasetWriter(root, fps=10, cameras={}, state_names=["x"], action_names=["a"]) as w:
        for _ in range(3):
            w.add_frame(state=np.zeros(1, np.float32), action=np.zeros(1, np.float32), task="t")
        w.save_episode()
    assert [p.name for p in tmp_path.iterdir()] == ["demos"]


def test_what_replaces_a_directory_gets_the_modes_the_umask_allows(tmp_path):
    """A dataset written through a private temp directory came out 0700: unreadable to a training job or a server
    running as another user."""
    from rfm.files import UMASK

    root = tmp_path / "demos"
    with LeRobotDatasetWriter(root, fps=10, cameras={}, state_names=["x"], action_names=["a"]) as w:
        for _ in range(3):
            w.add_frame(state=np.zeros(1, np.float32), action=np.zeros(1, np.float32), task="t")
        w.save_episode()
    assert root.stat().st_mode & 0o777 == 0o777 & ~UMASK
