"""bench/latency.py --quick: the latency benchmark runs end to end and writes its JSON (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # bench/latency.py as a subprocess

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_latency_bench_quick(tmp_path):
    out = tmp_path / "latency.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "latency.py"),
            "--quick",
            "--backends",
            "torch-eager,onnx-fp32,onnx-int8",
            "--out",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"torch-eager", "onnx-fp32", "onnx-int8"}
    assert {r["batch"] for r in rows} == {1, 8}
    for r in rows:
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["flops_per_chunk"] > 1e8
        assert r["vs_torch_eager"] > 0 and r["pct_of_peak"] > 0
    assert result["machine"]["peak_matmul_gflops_fp32"] > 0
