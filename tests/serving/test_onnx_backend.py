"""The server with the ONNX runner (export of the tiny checkpoint): same API, same answers as torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rfm.client import RFMClient
from serving.config import ServerConfig
from serving.server import ServerThread, runner_loader
from tests.serving.helpers import observation

pytestmark = pytest.mark.integration  # `rfm export` subprocess and a real server

RFM = [sys.executable, "-c", "import sys; from rfm.cli.main import main; sys.exit(main())"]


@pytest.mark.slow
def test_onnx_backend_serves_the_same_actions(tiny_checkpoint, tiny_runner, tmp_path):
    out = tmp_path / "onnx"
    r = subprocess.run([*RFM, "export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    obs = observation()
    with ServerThread(runner_loader(out, "onnx"), ServerConfig(max_batch=4, warmup_batch_sizes=(1, 4))) as s:
        assert s.state.load_error is None
        with RFMClient(s.url) as c:
            assert c.models()["backend"] == "onnx"
            np.testing.assert_allclose(c.act(obs), tiny_runner.predict(obs), atol=1e-4)
