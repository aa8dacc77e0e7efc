"""examples/edge_robot.py, the on-device robot loop of docs/EDGE.md, run as a user runs it: a recording that rfm
data info reads, one frame per tick the stand-in robot executed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rfm.data.lerobot import LeRobotDataset

pytestmark = pytest.mark.integration  # a MuJoCo robot, the bundled checkpoint, subprocesses

ROOT = Path(__file__).resolve().parents[2]


def test_the_edge_robot_example_records_every_tick_it_ran(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "edge_robot.py"), str(ROOT / "checkpoints" / "default"),
                        "--record", str(tmp_path / "field"), "--episodes", "2", "--max-steps", "8"],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("after 8 ticks") == 2 and "rfm data info" in r.stdout
    ds = LeRobotDataset(tmp_path / "field")
    assert [(e.length, e.meta["ended_by"], e.meta["session"]) for e in ds.episodes] == [(8, "robot", "edge-robot")] * 2
    info = subprocess.run([sys.executable, "-m", "rfm.cli.main", "data", "info", str(tmp_path / "field")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "episodes by outcome: 0 success, 2 failure" in info.stdout
