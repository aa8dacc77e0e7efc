"""Property-based fuzzing of the OpenAPI schema (schemathesis) against a real server: no 5xx, ever."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # schemathesis against a real server


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(exe).exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    r = subprocess.run([exe, "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
                        "--max-examples", "25", "--seed", "1", "--no-color"],
                       capture_output=True, text=True, timeout=300, check=False,
                       cwd=tmp_path)  # its .schemathesis/ cache stays out of the repo
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
