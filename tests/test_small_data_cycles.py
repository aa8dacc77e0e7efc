"""examples/small_data_cycles.sh, the 10-demo recipe in one command, on 2 generated demos and a few steps per cycle:
each cycle starts from the previous one's checkpoint at the right learning rate, and a rerun skips finished cycles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pipeline import rfm

pytestmark = pytest.mark.integration  # the example script end to end

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "small_data_cycles.sh")
SCRIPT_ENV = {**os.environ, "RFM": str(Path(sys.executable).parent / "rfm"), "EPISODES": "0"}  # no closed-loop eval


def test_cycles_chain_and_rerun_skips_finished(tmp_path: Path):
    data, out = tmp_path / "demos", tmp_path / "run"
    rfm("data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--cameras", "corner,topview",
        "--size", "48", "--out", str(data), "--workers", "1")
    env = {**SCRIPT_ENV, "THREADS": "1"}
    cmd = [SCRIPT, str(data), str(out), "2", "12"]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    first = json.loads((tmp_path / "run-c1" / "checkpoint" / "config.json").read_text())
    second = json.loads((tmp_path / "run-c2" / "checkpoint" / "config.json").read_text())
    assert first["model"]["relative_points"] and first["model"]["vision_points"] == 3
    assert first["meta"]["training"]["lr"] == 5e-4 and first["meta"]["training"]["steps_done"] == 12
    assert second["meta"]["training"]["init"] == str(tmp_path / "run-c1" / "checkpoint")
    assert second["meta"]["training"]["lr"] == 2.5e-4 and second["model"]["dropout"] == 0.0
    assert second["model"]["relative_points"]  # carried over from the first cycle's checkpoint

    weights = tmp_path / "run-c2" / "checkpoint" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.count("already finished") == 2
    assert weights.stat().st_mtime_ns == before


def test_dataset_list_with_a_missing_member_is_refused_before_training(tmp_path: Path):
    missing, other = tmp_path / "a", tmp_path / "b"
    cmd = [SCRIPT, f"{missing},{other}", str(tmp_path / "run")]
    proc = subprocess.run(cmd, check=False, env=SCRIPT_ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"dataset directory {missing} does not exist" in proc.stderr
    assert not missing.exists() and not other.exists()  # a list is never generated
    assert not (tmp_path / "run-c1").exists()  # nothing trained
