"""Hostile or broken clients (security audit): one request must not cost the server its memory, other robots
their answers, or the fleet its recording."""

from __future__ import annotations

import base64
import io
import json
import tracemalloc

import httpx
import numpy as np
import pytest
from PIL import Image

from serving import codec
from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import json_body, observation

pytestmark = pytest.mark.integration  # real servers


def _png(h: int, w: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_small_pngs_declaring_huge_images_are_refused_without_decoding_them():
    """A 48 kB PNG of 4096 x 4096 decodes to 50 MB: 30 of them in a 1.5 MB request took the server from 0.6 to
    2.2 GB (past a 2 Gi pod limit), as unknown cameras or at a size the camera cannot send. Neither is decoded."""
    big = _png(4096, 4096)
    body = {"images": {**{f"cam{i}": big for i in range(30)}, "front": big, "wrist": big}, "state": [0.0, 0.0, 0.0]}
    tracemalloc.start()
    req = codec.parse_act(body, ["front", "wrist"], {"front": [(16, 16)], "wrist": [(16, 16)]})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak >> 20} MB"
    assert req.observation["images"]["front"].shape == (4096, 4096, 3)  # its size, for the runtime's message


def test_an_instruction_that_is_not_unicode_fails_alone_and_never_reaches_the_recording(tiny_runner, tmp_path):
    """A lone surrogate ("\\ud800" is valid JSON) broke the tokenizer inside a batch, failing every robot in it
    with a 500; sent as a tick it poisoned the recording's task table, so every later episode of every robot was
    lost until a restart."""
    cfg = ServerConfig(max_batch=4, max_wait_ms=50, warmup_batch_sizes=(1,), record_dir=str(tmp_path / "rec"),
                       record_images="image")
    with ServerThread(tiny_runner, cfg) as s:
        bad = '{"images": %s, "state": [0, 0, 0], "instruction": "push \\ud800"}'
        images = json_body(observation())["images"]
        r = httpx.post(s.url + "/v1/act", content=bad % json.dumps(images), headers={"content-type":
                                                                                       "application/json"})
        assert r.status_code == 422 and "not valid Unicode" in r.json()["detail"]
        tick = '{"session_id": "x", "ticks": [{"images": %s, "state": [0, 0, 0], "instruction": "p\\udc80", ' \
               '"action": [0, 0]}]}'
        r = httpx.post(s.url + "/v1/ticks", content=tick % json.dumps(images),
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not valid Unicode" in r.json()["detail"]
        good = {**json_body(observation()), "session_id": "ok", "episode_end": True, "success": True}
        assert httpx.post(s.url + "/v1/act", json=good).status_code == 200
    from rfm.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(tmp_path / "rec")  # the good robot's episode was written: the task table is sound
    assert ds.num_episodes == 1 and ds.episode_meta(0)["session"] == "ok"


def test_shapes_numpy_cannot_build_and_endless_integers_are_422(server):
    for body in (('{"images": {}, "state": {"data": "", "shape": [4611686018427387904, 0, 4611686018427387904], '
                 '"dtype": "float32"}}'), '{"images": {}, "state": [' + "9" * 5000 + "]}"):
        r = httpx.post(server.url + "/v1/act", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text


def test_recording_memory_is_bounded_and_abandoned_sessions_end_while_others_record(tmp_path):
    """Open episodes are held in memory until they end: one long session grew without bound (96 kB a tick), and
    the idle timeout ran only once the queue had been empty a second, so under a live robot's traffic abandoned
    sessions were never closed."""
    import time

    from rfm.config import RobotInterface
    from rfm.data.lerobot import LeRobotDataset
    from rfm.runtime.recorder import Recorder

    itf = RobotInterface(cameras=["a"], image_size=(32, 32), state_names=["x"], action_names=["u"], chunk_size=2,
                         control_hz=10)
    rec = Recorder(tmp_path / "rec", itf, use_videos=False, idle_timeout_s=0.3, max_buffer_mb=0.1)  # ~34 frames
    frame = np.zeros((1, 3, 32, 32), np.uint8)
    rec.record_tick("abandoned", frame, np.zeros(1), "push", np.zeros(1))
    t = time.monotonic()
    while time.monotonic() - t < 2.0:  # a live robot keeps the queue busy
        rec.record_tick("live", frame, np.zeros(1), "push", np.zeros(1))
        time.sleep(0.01)
    rec.close()
    ds = LeRobotDataset(tmp_path / "rec")
    ended = {(e.meta["session"], e.meta["ended_by"]) for e in ds.episodes}
    assert ("abandoned", "idle") in ended and ("live", "length") in ended
    assert max(e.length for e in ds.episodes) <= 35


def test_request_bodies_read_at_once_are_bounded_server_wide(tiny_runner):
    """HTTP connections are not capped (probes and robots must get through) and each body may be 8 MB: 64 slow
    uploads held 1 GB. Past a server-wide budget a body is refused at once (503 + Retry-After), not read."""
    import socket
    import time

    with ServerThread(tiny_runner, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))) as s:
        s.state.bodies.limit = 3000
        slow = []
        for _ in range(2):  # two uploads under way, 2000 bytes declared each
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.sendall(b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2000\r\n\r\n{")
            slow.append(sock)
        time.sleep(0.3)
        r = httpx.post(s.url + "/v1/act", content=b"{" + b" " * 1990 + b"}", headers={"content-type":
                                                                                      "application/json"})
        assert r.status_code == 503 and r.json()["error"] == "overloaded" and r.headers["retry-after"]
        for sock in slow:
            sock.close()
        time.sleep(0.3)
        assert s.state.bodies.used == 0  # what the uploads held is given back when they end
        s.state.bodies.limit = 256 << 20
        assert httpx.post(s.url + "/v1/act", json=json_body(observation())).status_code == 200
