"""One process at a time writes a training run or a recording; a holder that dies frees it at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rfm.config import RobotInterface
from rfm.files import DirectoryLock, LockHeld
from rfm.runtime.recorder import Recorder

ITF = RobotInterface(cameras=["a"], image_size=(16, 16), state_names=["x"], action_names=["u"], chunk_size=2,
                     control_hz=10)


def test_a_killed_holder_frees_the_lock_though_its_forked_workers_live_on(tmp_path):
    """rfm train's data loader workers are forked from it: with flock they shared its lock, so `--resume` right
    after a SIGKILL was refused, naming the dead run, until the workers noticed and exited."""
    script = textwrap.dedent(f"""
        import os, time
        from rfm.files import DirectoryLock
        DirectoryLock({str(tmp_path / 'lock')!r}).acquire()
        if os.fork() == 0:  # a worker that outlives its parent for a while
            time.sleep(20)
            os._exit(0)
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(LockHeld, match=f"pid {proc.pid} on "):
        DirectoryLock(tmp_path / "lock").acquire()
    proc.kill()
    proc.wait()
    t = time.monotonic()
    with DirectoryLock(tmp_path / "lock"):  # at once, with the worker still alive
        assert time.monotonic() - t < 1


def test_two_servers_never_record_into_one_directory(tmp_path):
    """Two servers appending to one recording each numbered their files from what they read at start-up: one
    overwrote the other's episodes and their videos were mixed. The second is refused; the first's close frees it."""
    first = Recorder(tmp_path / "rec", ITF, use_videos=False)
    with pytest.raises(FileExistsError, match="another rfm serve is recording into it, or a robot"):
        Recorder(tmp_path / "rec", ITF, use_videos=False)
    first.record("r", np.zeros((1, 3, 16, 16), np.uint8), np.zeros(1), "push", np.zeros((2, 1)), episode_end=True)
    first.close()
    second = Recorder(tmp_path / "rec", ITF, use_videos=False)
    second.close()
