"""Opt-in (`-m compat`): rfm <-> real lerobot round trips via bench/lerobot_compat.py and a lerobot venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LEROBOT_PY = os.environ.get("RFM_LEROBOT_PYTHON", "/tmp/lerobot-venv/bin/python")
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "lerobot_compat.py"


@pytest.mark.compat
@pytest.mark.skipif(not Path(LEROBOT_PY).exists(), reason=f"no lerobot venv at {LEROBOT_PY} (see bench/lerobot_compat.py)")
def test_lerobot_reads_rfm_and_back(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--lerobot-python", LEROBOT_PY, "--out", str(tmp_path / "r.json")],
                         check=False, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 failed" in out.stdout
