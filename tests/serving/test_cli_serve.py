"""`rfm serve` as a real subprocess: starts, reports ready, serves, and stops on SIGTERM; clear CLI errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from serving.server import free_port
from tests.serving.helpers import msgpack_body, observation, wait_until_ready

pytestmark = pytest.mark.integration  # `rfm serve` as a subprocess

RFM = [sys.executable, "-c", "import sys; from rfm.cli.main import main; sys.exit(main())"]


def test_rfm_serve_subprocess(tiny_checkpoint, tmp_path):
    port = free_port()
    limits = tmp_path / "limits.json"
    limits.write_text('{"min": [-1, -1], "max": [1, 1]}')
    cmd = [*RFM, "serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
           "--max-batch", "4", "--threads", "1", "--action-limits", str(limits), "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url)
        r = httpx.post(url + "/v1/act", content=msgpack_body(observation()),
                       headers={"content-type": "application/msgpack"})
        assert r.status_code == 200
        assert httpx.get(url + "/v1/models").json()["server"]["action_limits"]["max"] == [1.0, 1.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn drains, then re-raises the signal it caught


def test_rfm_serve_errors_are_one_line(tmp_path):
    env = {**os.environ, "RFM_CHECKPOINT": str(tmp_path / "none")}
    r = subprocess.run([*RFM, "serve"], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "checkpoint directory" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([*RFM, "serve", "--checkpoint", str(tmp_path),
                        "--api-key-file", str(tmp_path / "keys")], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "--api-key-file" in r.stderr and "Traceback" not in r.stderr


def test_rfm_serve_refuses_a_port_in_use_before_loading_the_model(tiny_checkpoint, capsys):
    """A second `rfm serve` on a busy port: one line naming host and port, before any model load or export."""
    import socket

    from rfm.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and "another server" in err and "rfm.serving" not in err
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "70000"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_rfm_serve_refuses_a_record_dir_it_cannot_append_to(tiny_checkpoint, tmp_path, capsys):
    """A directory that is not a dataset, or a dataset of another robot: one line before the model loads (it used
    to be a start-up thread's traceback, and a server that never became ready)."""
    from rfm.cli.main import main
    from tests.data.conftest import FIXTURES

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    shutil.copytree(FIXTURES / "aloha-480x640", tmp_path / "aloha")  # another robot's dataset, a copy to write in
    for record, says in ((tmp_path / "notes", "exists and is not a LeRobot dataset"),
                         (tmp_path / "aloha", "do not match the model's")):
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0", "--record", str(record)]) == 2
        err = capsys.readouterr().err
        assert f"{record}: " in err and says in err and "rfm.serving" not in err, err[-500:]
        assert not (record / ".rfm-record.lock").exists()  # refused, it leaves nothing in the user's directory


def test_rfm_serve_checks_its_openpi_mapping_limits_and_audit_files_before_loading(tiny_checkpoint, tmp_path,
                                                                                     capsys):
    from rfm.cli.main import main

    (tmp_path / "map.json").write_text('{"images": {"observation/image": "nosuch"}}')
    (tmp_path / "limits.json").write_text('{"vx": [-1, 1]}')
    for flag, value, says in (("--openpi-mapping", tmp_path / "map.json", "images maps to unknown camera(s)"),
                              ("--action-limits", tmp_path / "limits.json", "for every action ['vx', 'vy']"),
                              ("--audit-log", tmp_path / "no" / "dir" / "audit.jsonl", "cannot write there")):
        assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--port", "0", flag, str(value)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and "rfm.serving" not in err, err


def test_rfm_serve_refuses_a_directory_that_is_not_a_checkpoint(tiny_checkpoint, tmp_path):
    """Before the server starts: one line naming the missing or broken file, not a start-up thread's traceback."""
    import shutil

    r = subprocess.run([*RFM, "serve", "--checkpoint", str(tmp_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and f"{tmp_path / 'config.json'}: missing" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    r = subprocess.run([*RFM, "serve", "--checkpoint", str(broken)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and f"{broken / 'model.safetensors'}: missing" in r.stderr
    assert "Uvicorn running" not in r.stderr and "Traceback" not in r.stderr
