"""`rfm train` as several processes (torchrun, the launcher `accelerate launch` uses), here on CPU cores with gloo:
one run of two processes, not two copies; a SIGTERM that reaches one process stops both after the same step with
the checkpoint saved; --resume continues the run, here on one process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_in_process import rfm

pytestmark = pytest.mark.integration  # real torchrun processes

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def torchrun(out: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "rfm.cli.main", "train", "--dataset", str(FIXTURE), "--preset", "tiny", "--image-size", "48", "48",
           "--batch-size", "4", "--num-workers", "1", "--log-every", "1", "--no-progress", "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the training process of `rank` started by `launcher`."""
    for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no rank {rank} under {launcher.pid}")


def stop(launcher: subprocess.Popen) -> None:
    """A launcher still running (a failed test): SIGTERM, on which torchrun stops its ranks, then SIGKILL."""
    if launcher.poll() is None:
        launcher.terminate()
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()


def logged_steps(out: Path) -> int:
    log = out / "logs" / "train.csv"
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks' pids in /proc")
def test_two_processes_train_as_one_run_stop_together_and_resume(tmp_path):
    out = tmp_path / "ddp"
    run = torchrun(out, "--steps", "5000", "--save-every", "5000")
    try:
        deadline = time.time() + 240
        while logged_steps(out) < 3:
            assert run.poll() is None and time.time() < deadline, run.stdout.read()[-3000:]
            time.sleep(0.2)
        # one rank and its process group, as a launcher signals a rank: its DataLoader worker keeps loading and the
        # other rank, never signalled, stops after the same step instead of waiting for it in the next all-reduce
        os.killpg(rank_pid(run, 1), signal.SIGTERM)
        log = run.communicate(timeout=120)[0]
    finally:
        stop(run)
    assert "DataLoader worker" not in log, log[-3000:]
    assert run.returncode != 0, log[-3000:]  # rank 0 exits 143 (SIGTERM); the stop is reported once, by rank 0
    stopped = [line for line in log.splitlines() if "stopped by SIGTERM after step" in line]
    assert len(stopped) == 1, log[-3000:]  # one line for the run, not one per process
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    step = meta["steps_done"]
    assert meta["processes"] == 2 and f"after step {step};" in stopped[0]

    # requeued onto one process (what is free): the schedule continues at the saved step, so it ends at lr 0
    resumed = rfm("train", "--dataset", str(FIXTURE), "--preset", "tiny", "--image-size", "48", "48", "--batch-size",
                  "4", "--num-workers", "0", "--log-every", "1", "--no-progress", "--out", str(out), "--steps",
                  str(step + 2), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoint'} at step {step}" in resumed.stdout + resumed.stderr
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert meta["processes"] == 1 and meta["steps_done"] == step + 2
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert int(rows[-1]["step"]) == step + 2 and float(rows[-1]["lr"]) == 0.0
