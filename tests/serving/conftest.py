"""Fixtures: one tiny checkpoint and runner per session; real uvicorn servers on free 127.0.0.1 ports."""

from __future__ import annotations

import json

import pytest

from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import load_tiny, make_checkpoint, make_prefix_checkpoint

API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serving") / "tiny")


@pytest.fixture(scope="session")
def tiny_runner(tiny_checkpoint):
    return load_tiny(tiny_checkpoint)


@pytest.fixture(scope="session")
def prefix_checkpoint(tmp_path_factory):
    """A tiny checkpoint taking up to 4 committed actions (model.prefix_max = 4)."""
    return make_prefix_checkpoint(tmp_path_factory.mktemp("serving") / "tiny-prefix")


@pytest.fixture(scope="session")
def prefix_runner(prefix_checkpoint):
    return load_tiny(prefix_checkpoint)


@pytest.fixture(scope="module")
def prefix_server(prefix_runner):
    """Open server for the prefix_max = 4 model (no action limits: answers are the model's)."""
    cfg = ServerConfig(max_batch=8, max_wait_ms=5, warmup_batch_sizes=(1, 4))
    with ServerThread(prefix_runner, cfg) as s:
        yield s


@pytest.fixture(scope="module")
def server(tiny_runner, tiny_checkpoint, tmp_path_factory):
    """Open server (no keys) with an audit log and tight action limits on 'vy' (so clipping shows)."""
    d = tmp_path_factory.mktemp("srv")
    (d / "limits.json").write_text(json.dumps({"vx": [-100.0, 100.0], "vy": [-0.01, 0.01]}))
    cfg = ServerConfig(max_batch=8, max_wait_ms=5, audit_log=str(d / "audit.jsonl"),
                       action_limits=str(d / "limits.json"), max_body_bytes=2 * 1024 * 1024,
                       max_ws_message_bytes=2 * 1024 * 1024, warmup_batch_sizes=(1, 8))
    with ServerThread(tiny_runner, cfg, checkpoint=tiny_checkpoint) as s:
        s.audit_path = d / "audit.jsonl"
        yield s


@pytest.fixture(scope="module")
def auth_server(tiny_runner, tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    (d / "keys.txt").write_text(f"# fleet keys\n{API_KEY}\nanother-key-abcdefghijklmnop\n")
    cfg = ServerConfig(max_batch=4, api_keys_file=str(d / "keys.txt"), warmup_batch_sizes=(1,))
    with ServerThread(tiny_runner, cfg) as s:
        yield s
