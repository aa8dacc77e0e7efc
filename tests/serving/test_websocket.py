"""WebSocket /v1/ws (JSON and msgpack frames) and /openpi with the real openpi-client package."""

from __future__ import annotations

import json
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest
import websockets.sync.client as wsc
from websockets.exceptions import ConnectionClosed

from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import FaultyRunner, gated_loader, json_body, msgpack_body, observation

pytestmark = pytest.mark.integration  # a real uvicorn server


def ws_url(server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def test_v1_ws_json_and_msgpack_frames_and_errors_keep_the_connection(server):
    with wsc.connect(ws_url(server, "/v1/ws"), max_size=None) as ws:
        ws.send(json.dumps(json_body(observation(), request_id="w1")))
        out = json.loads(ws.recv())
        assert out["request_id"] == "w1" and np.asarray(out["actions"]).shape == (8, 2)
        ws.send(msgpack_body(observation(), request_id="w2"))
        out = msgpack.unpackb(ws.recv())
        assert out["request_id"] == "w2" and out["actions"]["shape"] == [8, 2]
        ws.send(msgpack_body({**observation(), "state": np.zeros(5)}))
        err = msgpack.unpackb(ws.recv())
        assert err["status"] == 422 and "state has 5 values, the model expects 3" in err["detail"]
        ws.send("{broken")
        err = json.loads(ws.recv())
        assert err["status"] == 422 and "not valid JSON" in err["detail"]
        ws.send(msgpack_body(observation(), request_id="w3"))  # still open and working
        assert msgpack.unpackb(ws.recv())["request_id"] == "w3"


def test_v1_ws_frames_sent_ahead_run_together_and_are_answered_in_order(tiny_runner):
    """A robot that sends before its last answer came back is not queued behind itself on the socket."""
    runner = FaultyRunner(tiny_runner)
    with ServerThread(runner, ServerConfig(max_batch=8, max_wait_ms=5, warmup_batch_sizes=(1,))) as server:
        runner.entered.clear()
        runner.hold = threading.Event()  # the first batch holds the worker until the other frames are in
        with wsc.connect(ws_url(server, "/v1/ws"), max_size=None) as ws:
            ids = [f"p{i}" for i in range(4)]
            for i, rid in enumerate(ids):
                body = msgpack_body(observation(), request_id=rid) if i != 2 else msgpack_body(
                    {**observation(), "state": np.zeros(5)}, request_id=rid)  # one bad frame among them
                ws.send(body)
            assert runner.entered.wait(30)
            deadline = time.monotonic() + 30  # the three good frames: in the held batch or queued behind it
            while runner.batch_sizes[-1] + server.state.service.batcher.depth() < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            runner.hold.set()
            out = [msgpack.unpackb(ws.recv()) for _ in ids]
    assert [o.get("request_id") for o in out] == ["p0", "p1", None, "p3"] and out[2]["status"] == 422
    assert max(o.get("batch_size", 0) for o in out) >= 2  # the frames sent ahead shared a batch


def test_v1_ws_client_gone_with_frames_in_flight_frees_the_connection(server):
    import time

    import httpx

    ws = wsc.connect(ws_url(server, "/v1/ws"), max_size=None)
    for _ in range(12):  # more than the 8 a socket may have in flight: the server stops reading, then we leave
        ws.send(msgpack_body(observation()))
    ws.close()
    gauge = 'rfm_websocket_connections{endpoint="/v1/ws"} 0.0'
    deadline = time.monotonic() + 10
    while gauge not in httpx.get(server.url + "/metrics").text:
        assert time.monotonic() < deadline, "the server still holds the closed connection"
        time.sleep(0.1)
    with wsc.connect(ws_url(server, "/v1/ws"), max_size=None) as again:  # and goes on serving
        again.send(msgpack_body(observation(), request_id="after"))
        assert msgpack.unpackb(again.recv())["request_id"] == "after"


def test_v1_ws_message_size_limit_closes_with_1009(tiny_runner):
    # a 64 KiB limit: the oversized frame fits in the socket buffers, so the client finishes sending before the
    # server closes (with megabytes the close can reset the connection mid-send; the server is right either way)
    cfg = ServerConfig(max_batch=1, max_body_bytes=64 * 1024, max_ws_message_bytes=64 * 1024, warmup_batch_sizes=(1,))
    with ServerThread(tiny_runner, cfg) as small, wsc.connect(ws_url(small, "/v1/ws"), max_size=None) as ws:
        ws.send(b"\x00" * (100 * 1024))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def openpi_obs(obs: dict) -> dict:
    return {"observation/image": obs["images"]["front"], "observation/wrist_image": obs["images"]["wrist"],
            "observation/state": np.asarray(obs["state"], np.float64), "prompt": obs["instruction"]}


def test_real_openpi_client_gets_actions(server, tiny_runner):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    policy = WebsocketClientPolicy(host=ws_url(server, "/openpi"))
    meta = policy.get_server_metadata()
    assert meta["cameras"] == ["front", "wrist"] and meta["action_dim"] == 2
    obs = observation()
    out = policy.infer(openpi_obs(obs))
    assert isinstance(out["actions"], np.ndarray) and out["actions"].shape == (8, 2)
    assert out["actions"].dtype == np.float32 and "infer_ms" in out["server_timing"]
    np.testing.assert_allclose(out["actions"][:, 0], tiny_runner.predict(obs)[:, 0], atol=1e-4)
    out2 = policy.infer(openpi_obs(observation(np.random.default_rng(3))))  # the connection is reused
    assert out2["actions"].shape == (8, 2)


def test_openpi_clients_as_openpis_examples_make_them_connect_to_the_root_path(server):
    """WebsocketClientPolicy(host, port), as openpi's examples call it, asks for "/": the same protocol as /openpi."""
    from urllib.parse import urlparse

    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    url = urlparse(ws_url(server, "/"))
    policy = WebsocketClientPolicy(host=url.hostname, port=url.port)
    assert policy.get_server_metadata()["cameras"] == ["front", "wrist"]
    assert policy.infer(openpi_obs(observation()))["actions"].shape == (8, 2)


def test_openpi_errors_are_a_text_frame_then_close_1011_without_traceback(server):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    policy = WebsocketClientPolicy(host=ws_url(server, "/openpi"))
    bad = openpi_obs(observation())
    bad["observation/state"] = np.zeros(7)
    with pytest.raises(RuntimeError, match="state has 7 values, the model expects 3") as info:
        policy.infer(bad)
    assert "Traceback" not in str(info.value)
    with pytest.raises(ConnectionClosed) as closed:
        policy._ws.recv()
    assert closed.value.rcvd.code == 1011
    missing = openpi_obs(observation())
    del missing["observation/wrist_image"]
    with pytest.raises(RuntimeError, match=r"no image for camera 'wrist': expected one of the keys"):
        WebsocketClientPolicy(host=ws_url(server, "/openpi")).infer(missing)
    assert WebsocketClientPolicy(host=ws_url(server, "/openpi")).infer(openpi_obs(observation()))["actions"].shape \
        == (8, 2)


def test_openpi_object_arrays_are_refused_not_unpickled(server):
    frame = msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"\x80\x04K\x01.",
                                                 b"dtype": "|O", b"shape": [1]}}, use_bin_type=True)
    with wsc.connect(ws_url(server, "/openpi"), max_size=None) as ws:
        ws.recv()  # metadata
        ws.send(frame)
        msg = ws.recv()
        assert isinstance(msg, str) and "not allowed" in msg


def test_websockets_beyond_max_connections_are_refused_with_503_and_retry_after(tiny_runner, tmp_path):
    """A flood of sockets cannot exhaust the server: past --max-connections a handshake gets 503 + Retry-After (and
    an audit line), and a place frees up when a robot disconnects."""
    from websockets.exceptions import InvalidStatus

    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), max_connections=2, audit_log=str(tmp_path / "a.jsonl"))
    with ServerThread(tiny_runner, cfg) as s:
        first, second = wsc.connect(ws_url(s, "/v1/ws")), wsc.connect(ws_url(s, "/openpi"))
        second.recv(timeout=10)  # openpi's metadata
        with pytest.raises(InvalidStatus) as info:
            wsc.connect(ws_url(s, "/v1/ws"))
        resp = info.value.response
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert b"--max-connections" in resp.body
        deadline = time.monotonic() + 5
        while '"overloaded"' not in (tmp_path / "a.jsonl").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[-1])
        assert (refused["endpoint"], refused["status"], refused["address"]) == ("/v1/ws", 503, "127.0.0.1")
        first.close()
        deadline = time.monotonic() + 10
        while s.state.websockets >= 2 and time.monotonic() < deadline:  # the server has seen it go
            time.sleep(0.01)
        with wsc.connect(ws_url(s, "/v1/ws")) as third:
            third.send(msgpack_body(observation()))
            assert "actions" in msgpack.unpackb(third.recv(timeout=30))
            # robots holding every WebSocket place do not shut out probes, metrics or HTTP clients
            assert [httpx.get(s.url + p).status_code for p in ("/healthz", "/readyz", "/metrics", "/v1/models")] \
                == [200] * 4
        second.close()


def test_a_socket_that_sends_nothing_is_closed(tiny_runner):
    """uvicorn times out idle connections only after a first response: silent sockets piled up until the file
    descriptors ran out. The server closes one after IDLE_S seconds of silence."""
    import socket

    from serving.server import IDLE_S

    with ServerThread(tiny_runner, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))) as s:
        silent = socket.create_connection(("127.0.0.1", s.port))
        silent.settimeout(IDLE_S + 10)
        t = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server
        assert time.monotonic() - t < IDLE_S + 5
        silent.close()
        assert httpx.get(s.url + "/healthz").status_code == 200


def test_a_trickling_client_is_cut_off_and_others_are_served(tiny_runner, monkeypatch):
    """A slowloris client sending a byte every second reset the idle timeout and held its connection for ever; a
    request head now has HEAD_S seconds and a body BODY_S (shortened here) before the server gives up on it."""
    import socket

    import serving.app
    import serving.server

    monkeypatch.setattr(serving.server, "HEAD_S", 1.5)
    monkeypatch.setattr(serving.app, "BODY_S", 1.5)

    def trickle(sock, data: bytes) -> bytes:
        """Send `data` a byte every 0.3 s until the server closes or answers; what it sent back."""
        sock.settimeout(0.3)
        for i in range(len(data)):
            try:
                sock.sendall(data[i:i + 1])
                got = sock.recv(4096)
                return got  # an answer, or b"" for a close
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b"never cut off"

    with ServerThread(tiny_runner, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))) as s:
        head = socket.create_connection(("127.0.0.1", s.port))
        t = time.monotonic()
        assert trickle(head, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200) == b""
        assert time.monotonic() - t < 5
        body = socket.create_connection(("127.0.0.1", s.port))
        body.sendall(b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n")
        answer = trickle(body, b"{" + b" " * 400)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer, answer
        head.close(), body.close()
        assert httpx.post(s.url + "/v1/act", json=json_body(observation())).status_code == 200


def test_a_graceful_stop_answers_every_websocket_request_it_took(tiny_runner):
    """SIGTERM closed WebSockets at once (1012) and dropped answers already computed (and recorded). Now the server
    first refuses new requests (503, /readyz draining) and sends every answer it owes, then closes."""
    runner = FaultyRunner(tiny_runner, delay_s=0.15)  # each batch takes a while: answers are still coming
    server = ServerThread(runner, ServerConfig(max_batch=1, warmup_batch_sizes=(1,))).start()
    with wsc.connect(ws_url(server, "/v1/ws")) as robot, wsc.connect(ws_url(server, "/openpi")) as pi:
        pi.recv(timeout=10)  # metadata
        for _ in range(4):
            robot.send(msgpack_body(observation()))
        pi.send(openpi_pack(observation()))
        time.sleep(0.05)  # taken, not yet answered
        stopper = threading.Thread(target=server.stop, kwargs={"drain": True})
        stopper.start()
        answers = [msgpack.unpackb(robot.recv(timeout=30)) for _ in range(4)]
        assert all("actions" in a for a in answers), answers
        assert "actions" in openpi_unpack(pi.recv(timeout=30))
        stopper.join(30)
    assert not server.thread.is_alive()


def openpi_pack(obs: dict) -> bytes:
    from serving import openpi

    return openpi.pack({"observation/image": obs["images"]["front"], "observation/wrist_image": obs["images"]["wrist"],
                        "observation/state": np.asarray(obs["state"], np.float32), "prompt": obs["instruction"]})


def openpi_unpack(data: bytes) -> dict:
    from serving import openpi

    return openpi.unpack(data)


def test_a_client_that_leaves_mid_body_is_not_a_server_error(tiny_runner, caplog):
    """A robot cut off while posting (ticks, an observation) was counted as a 500 with a traceback in the log: an
    alert on 5xx fired for the network's doing."""
    import socket

    with ServerThread(tiny_runner, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))) as s:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.sendall(b"POST /v1/act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{\"state\": [")
            time.sleep(0.1)
            sock.close()
        time.sleep(0.3)
        metrics = httpx.get(s.url + "/metrics").text
        assert 'status="500"' not in metrics and 'status="499"' in metrics
        assert "unexpected error" not in caplog.text
        assert httpx.post(s.url + "/v1/act", json=json_body(observation())).status_code == 200


def test_an_openpi_robot_started_before_the_model_is_ready_waits_for_it(tiny_runner):
    """openpi's client waits for its server by retrying only a refused connection; rfm's port opens at once and
    answered the handshake 503 while the model loaded, which crashed the robot. Now the connection is taken and the
    metadata frame comes once the model is ready; a model that fails to load closes it with the reason."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    slow_loader, gate = gated_loader(tiny_runner)
    s = ServerThread(slow_loader, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))).start(wait_ready=False)
    try:
        threading.Timer(0.5, gate.set).start()
        policy = WebsocketClientPolicy(host=ws_url(s, "/openpi"))  # connects while loading; returns when ready
        assert policy.get_server_metadata()["action_dim"] == 2
        out = policy.infer(openpi_obs(observation()))
        assert out["actions"].shape == (8, 2) and "infer_ms" in out["policy_timing"]
    finally:
        s.stop()

    def broken_loader():
        time.sleep(0.3)
        raise FileNotFoundError("/nowhere/ckpt: checkpoint directory not found")

    s = ServerThread(broken_loader, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))).start(wait_ready=False)
    try:
        with wsc.connect(ws_url(s, "/openpi")) as ws:
            assert "checkpoint directory not found" in ws.recv(timeout=10)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
    finally:
        s.stop()


def test_openpi_float_images_are_taken_as_openpi_policies_take_them(server, tiny_runner):
    """openpi's policies take float images in [0, 1] (255 x value, as uint8); rfm answered 422."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    obs = observation()
    as_float = {**obs, "images": {c: img.astype(np.float32) / 255.0 for c, img in obs["images"].items()}}
    seen = {**obs, "images": {c: (255 * img).astype(np.uint8) for c, img in as_float["images"].items()}}
    policy = WebsocketClientPolicy(host=ws_url(server, "/openpi"))
    out = policy.infer(openpi_obs(as_float))
    np.testing.assert_allclose(out["actions"][:, 0], tiny_runner.predict(seen)[:, 0], atol=1e-4)  # dim 1: clipped
    bad = {**obs, "images": {c: img.astype(np.float32) for c, img in obs["images"].items()}}  # 0-255 as floats
    with pytest.raises(Exception, match=r"values in \[0, 1\]"):
        policy.infer(openpi_obs(bad))


def test_uvicorns_per_connection_lines_are_debug_only(tiny_runner):
    """A fleet's reconnects made uvicorn's per-WebSocket lines 6,240 of a server log's 6,252 lines at the default
    --log-level info, burying its warnings; they show at debug."""
    import logging

    from serving.app import create_app
    from serving.server import uvicorn_config

    def shown(msg: str, level: str) -> bool:
        uvicorn_config(create_app(tiny_runner, ServerConfig()), "127.0.0.1", 0, ServerConfig(), log_level=level)
        record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, (), None)
        return logging.getLogger("uvicorn.error").filter(record)

    for noise in ("connection open", "connection closed", '127.0.0.1:5432 - "WebSocket /v1/ws" [accepted]'):
        assert not shown(noise, "info") and shown(noise, "debug")
    assert shown("Shutting down", "info") and shown('127.0.0.1:5432 - "WebSocket /v1/ws" 403', "info")
