"""The whole small-data loop through the CLI, as a user runs it: generate 2 demos -> train -> resume -> evaluate.

Success is not asserted (a few dozen steps); that every stage runs on real files, checkpoints atomically, resumes
at the saved step and evaluates closed loop is.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests import cli_in_process

pytestmark = pytest.mark.integration  # generate, train, resume, evaluate through the CLI


def rfm(*args: str):
    """`rfm ARGS` in this process (tests.cli_in_process), which must succeed."""
    proc = cli_in_process.rfm(*args)
    assert proc.returncode == 0, f"rfm {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_generate_train_resume_evaluate(tmp_path: Path):
    data, run = tmp_path / "demos", tmp_path / "run"
    rfm("data", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "2", "--cameras", "corner2",
        "--size", "48", "--out", str(data), "--workers", "1")
    common = ["train", "--dataset", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "8",
              "--chunk-size", "8", "--warmup-steps", "2", "--save-every", "12", "--log-every", "6",
              "--num-workers", "0", "--threads", "1", "--no-progress"]
    rfm(*common, "--steps", "24")
    ckpt = run / "checkpoint"
    assert json.loads((ckpt / "config.json").read_text())["meta"]["training"]["steps_done"] == 24

    rfm(*common, "--steps", "36", "--resume")
    with open(run / "logs" / "train.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [6, 12, 18, 24, 30, 36]  # continued from 24, not restarted
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    assert meta["training"]["steps_done"] == 36 and meta["data"]["episodes"] == 2

    out = tmp_path / "eval.json"
    proc = rfm("eval", "--checkpoint", str(ckpt), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "16",
               "--out", str(out), "--no-progress")
    res = json.loads(out.read_text())
    assert res["tasks"]["reach-v3"]["episodes"] == 1 and res["tasks"]["reach-v3"]["mean_steps"] <= 16
    assert "reach-v3" in proc.stdout
