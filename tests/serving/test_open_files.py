"""A server's robots are file descriptors: under a low open-file limit it lowers --max-connections to what fits and
refuses the rest with 503, instead of running out of descriptors and failing every new connection and its probes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as wsc
from websockets.exceptions import InvalidStatus

from serving.server import free_port
from tests.serving.helpers import wait_until_ready

pytestmark = [pytest.mark.integration,  # a real `rfm serve` under a shell's ulimit
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX open-file limits")]


def test_a_server_under_a_low_open_file_limit_caps_its_websockets_and_keeps_answering_probes(tiny_checkpoint,
                                                                                           tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = (f"ulimit -n 200 && exec {sys.executable} -m rfm.cli.main serve --checkpoint {tiny_checkpoint} "
             f"--engine torch --port {port} --threads 1 --log-level warning --record {tmp_path / 'rec'}")
    proc = subprocess.Popen(["bash", "-c", serve], env={**os.environ, "RFM_ENGINE": "torch"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    robots = []
    try:
        wait_until_ready(proc, url)
        fits = (200 - 64) // 3  # three descriptors a robot while recording: WebSocket, ticks, spill file
        for _ in range(fits):
            robots.append(wsc.connect(f"ws://127.0.0.1:{port}/v1/ws"))
        with pytest.raises(InvalidStatus) as refused:
            wsc.connect(f"ws://127.0.0.1:{port}/v1/ws")
        assert refused.value.response.status_code == 503
        assert [httpx.get(url + p).status_code for p in ("/healthz", "/readyz", "/metrics")] == [200] * 3
    finally:
        for ws in robots:
            ws.close()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert f"--max-connections 1024 does not fit this process's open-file limit (200, three per robot while " \
           f"recording): at most {fits} WebSockets" in out, out[-3000:]
    assert Path(tmp_path / "rec").is_dir()
