"""committed_actions (delay-aware continuation) through a real server: /v1/act (JSON, msgpack), /v1/ws, openpi.

A model with prefix_max 4 answers with a chunk that starts with the committed actions, as its runner does; requests
with and without them share batches; bad ones are refused with 422 before they are queued, and a model with
prefix_max 0 refuses any; the server keeps serving after each.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgpack
import numpy as np
import pytest
import websockets.sync.client as wsc

from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import FaultyRunner, json_body, msgpack_body, observation

pytestmark = pytest.mark.integration  # real uvicorn servers

MP = {"content-type": "application/msgpack"}
COMMITTED = [[0.5, -0.25], [0.125, 2.0], [-0.375, 0.25]]


def post(server, body) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(server.url + "/v1/act", content=body, headers=MP, timeout=30)
    return httpx.post(server.url + "/v1/act", json=body, timeout=30)


def actions_of(r: httpx.Response) -> np.ndarray:
    if r.headers["content-type"] == "application/msgpack":
        a = msgpack.unpackb(r.content)["actions"]
        return np.frombuffer(a["data"], np.float32).reshape(a["shape"])
    return np.asarray(r.json()["actions"], np.float32)


def ws_url(server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def test_http_json_and_msgpack_answers_start_with_the_committed_actions(prefix_server, prefix_runner):
    obs = observation(np.random.default_rng(1))
    ref = prefix_runner.predict({**obs, "committed_actions": COMMITTED})
    free = prefix_runner.predict(obs)
    assert np.abs(ref[3:] - free[3:]).max() > 1e-3  # what was committed changes the continuation
    raw = np.asarray(COMMITTED, np.float32)
    bodies = {"json": json_body(obs, committed_actions=COMMITTED),
              "msgpack": msgpack_body(obs, committed_actions=COMMITTED),
              "msgpack raw array": msgpack_body(obs, committed_actions={"data": raw.tobytes(), "shape": [3, 2],
                                                                        "dtype": "float32"})}
    for name, body in bodies.items():
        r = post(prefix_server, body)
        assert r.status_code == 200, (name, r.text)
        out = actions_of(r)
        np.testing.assert_allclose(out[:3], COMMITTED, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(out, ref, atol=1e-4, err_msg=name)
    for none in (None, []):  # null or an empty list: no committed actions
        r = post(prefix_server, json_body(obs, committed_actions=none))
        assert r.status_code == 200 and np.abs(actions_of(r) - free).max() <= 1e-4
    models = httpx.get(prefix_server.url + "/v1/models").json()
    assert models["prefix_max"] == 4


def test_v1_ws_and_openpi_carry_committed_actions(prefix_server, prefix_runner):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    obs = observation(np.random.default_rng(2))
    ref = prefix_runner.predict({**obs, "committed_actions": COMMITTED[:2]})
    with wsc.connect(ws_url(prefix_server, "/v1/ws"), max_size=None) as ws:
        ws.send(json.dumps(json_body(obs, committed_actions=COMMITTED[:2], request_id="w1")))
        out = json.loads(ws.recv())
        np.testing.assert_allclose(np.asarray(out["actions"])[:2], COMMITTED[:2], atol=1e-6)
        np.testing.assert_allclose(out["actions"], ref, atol=1e-4)
        ws.send(msgpack_body(obs, committed_actions=COMMITTED[:2], request_id="w2"))
        a = msgpack.unpackb(ws.recv())["actions"]
        np.testing.assert_allclose(np.frombuffer(a["data"], np.float32).reshape(a["shape"]), ref, atol=1e-4)
        ws.send(msgpack_body(obs, committed_actions=[[0.0, 0.0]] * 5))  # too many: in-band 422, socket stays open
        err = msgpack.unpackb(ws.recv())
        assert err["status"] == 422 and "has 5 actions, this model takes at most 4" in err["detail"]
        ws.send(msgpack_body(obs, request_id="w3"))
        assert msgpack.unpackb(ws.recv())["request_id"] == "w3"

    policy = WebsocketClientPolicy(host=ws_url(prefix_server, "/openpi"))
    assert policy.get_server_metadata()["prefix_max"] == 4
    openpi_obs = {"observation/image": obs["images"]["front"], "observation/wrist_image": obs["images"]["wrist"],
                  "observation/state": np.asarray(obs["state"], np.float64), "prompt": obs["instruction"]}
    out = policy.infer({**openpi_obs, "committed_actions": np.asarray(COMMITTED[:2], np.float32)})["actions"]
    np.testing.assert_allclose(out[:2], COMMITTED[:2], atol=1e-6)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    plain = policy.infer(openpi_obs)["actions"]  # an openpi client that never sends the key: as before
    np.testing.assert_allclose(plain, prefix_runner.predict(obs), atol=1e-4)
    with pytest.raises(RuntimeError, match=r"422 invalid_observation: 'committed_actions' has shape \(2, 3\)"):
        WebsocketClientPolicy(host=ws_url(prefix_server, "/openpi")).infer(
            {**openpi_obs, "committed_actions": np.zeros((2, 3), np.float32)})


class PrefixLog(FaultyRunner):
    """Records each batch's committed-action counts (prefix_len; None: no row had any)."""

    def __init__(self, inner, delay_s: float) -> None:
        super().__init__(inner, delay_s)
        self.prefix_lens: list[list[int] | None] = []

    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None):
        self.prefix_lens.append(None if prefix_len is None else prefix_len.tolist())
        return super()._forward(images, state, text, text_mask, noise, prefix, prefix_len)


def test_one_batch_mixes_requests_with_and_without_committed_actions(prefix_runner):
    runner = PrefixLog(prefix_runner, delay_s=0.0)
    rng = np.random.default_rng(3)
    obs = [observation(rng) for _ in range(4)]
    commits = [COMMITTED, None, COMMITTED[:1], None]
    bodies = [json_body(o, **({} if c is None else {"committed_actions": c})) for o, c in zip(obs, commits)]
    with ServerThread(runner, ServerConfig(max_batch=8, max_wait_ms=50, warmup_batch_sizes=(1,))) as s:
        runner.prefix_lens.clear()
        runner.entered.clear()
        runner.hold = threading.Event()
        blocker = threading.Thread(target=post, args=(s, json_body(observation())))
        blocker.start()  # holds the worker until the four below are queued behind it: they run as one batch
        assert runner.entered.wait(30)
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(post, s, b) for b in bodies]
            deadline = time.monotonic() + 30
            while s.state.service.batcher.depth() < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            runner.hold.set()
            responses = [f.result() for f in pending]
        blocker.join()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(runner.prefix_lens[-1]) == [0, 0, 1, 3]  # one batch: the two with and the two without
    assert all(r.json()["batch_size"] == 4 for r in responses)
    for o, c, r in zip(obs, commits, responses):
        alone = prefix_runner.predict(o if c is None else {**o, "committed_actions": c})
        np.testing.assert_allclose(actions_of(r), alone, atol=1e-4)
        if c is not None:
            np.testing.assert_allclose(actions_of(r)[: len(c)], c, atol=1e-6)


def _bad(obs: dict) -> list[tuple[str, bytes | dict, str]]:
    nan = json.dumps(json_body(obs, committed_actions=[[float("nan"), 0.0]])).encode()
    return [
        ("too many", json_body(obs, committed_actions=[[0.0, 0.0]] * 5), r"has 5 actions, this model takes at most 4"),
        ("wrong width", json_body(obs, committed_actions=[[1.0, 2.0, 3.0]]), r"has shape \(1, 3\), expected \(P, 2\)"),
        ("wrong width (msgpack)", msgpack_body(obs, committed_actions=[[1.0]]), r"has shape \(1, 1\), expected"),
        ("ragged", json_body(obs, committed_actions=[[1.0, 2.0], [1.0]]), r"'committed_actions'"),
        ("not numbers", json_body(obs, committed_actions=[["a", 1.0]]),
         r"'committed_actions'\[0\] must be a non-empty list of numbers"),
        ("booleans", json_body(obs, committed_actions=[[True, False]]), r"non-empty list of numbers"),
        ("empty action", json_body(obs, committed_actions=[[]]), r"non-empty list of numbers"),
        ("flat list", json_body(obs, committed_actions=[1.0, 2.0]), r"non-empty list of numbers"),
        ("not a list", json_body(obs, committed_actions="soon"), r"must be a list of actions"),
        ("NaN", nan, r"non-finite values"),
    ]


def test_bad_committed_actions_are_refused_and_the_server_keeps_serving(prefix_server):
    obs = observation()
    for name, body, pattern in _bad(obs):
        if isinstance(body, bytes) and body.startswith(b"{"):
            r = httpx.post(prefix_server.url + "/v1/act", content=body, headers={"content-type": "application/json"})
        else:
            r = post(prefix_server, body)
        assert r.status_code == 422, (name, r.text)
        assert r.json()["error"] in ("invalid_observation", "invalid_payload"), name
        assert re.search(pattern, r.json()["detail"]), (name, r.json()["detail"])
    r = post(prefix_server, json_body(obs, committed_actions=COMMITTED))
    assert r.status_code == 200 and np.allclose(actions_of(r)[:3], COMMITTED, atol=1e-6)


def test_a_model_without_prefix_refuses_committed_actions(server):
    obs = observation()
    for body in (json_body(obs, committed_actions=[[0.1, 0.2]]), msgpack_body(obs, committed_actions=[[0.1, 0.2]])):
        r = post(server, body)
        assert r.status_code == 422 and r.json()["error"] == "invalid_observation"
        assert "this model takes no committed actions (model.prefix_max = 0" in r.json()["detail"]
    assert post(server, json_body(obs, committed_actions=[])).status_code == 200  # empty: none, as the schema says
    assert post(server, msgpack_body(obs)).status_code == 200
    assert httpx.get(server.url + "/v1/models").json()["prefix_max"] == 0


def test_the_openapi_document_describes_committed_actions(prefix_server, server):
    def field(s) -> dict:
        spec = httpx.get(s.url + "/openapi.json").json()
        return spec["components"]["schemas"]["ActRequestBody"]["properties"]["committed_actions"]

    rows, null = field(prefix_server)["anyOf"]
    assert null == {"type": "null"} and rows["maxItems"] == 4 and "At most 4" in field(prefix_server)["description"]
    assert rows["items"]["minItems"] == rows["items"]["maxItems"] == 2
    off = field(server)
    assert off["anyOf"][0]["maxItems"] == 0 and "rejected with 422" in off["description"]


def test_the_onnx_engine_serves_committed_actions(prefix_checkpoint, prefix_runner, tmp_path):
    """`rfm serve --engine onnx`: the cached export of a prefix_max model takes committed actions like PyTorch."""
    from rfm.export.engine import engine_loader

    loader = engine_loader(prefix_checkpoint, "onnx", device="cpu", cache_dir=tmp_path / "cache")
    with ServerThread(loader, ServerConfig(max_batch=4, warmup_batch_sizes=(1,))) as s:
        assert s.state.load_error is None, s.state.load_error
        models = httpx.get(s.url + "/v1/models").json()
        assert models["engine"] == "onnx" and models["prefix_max"] == 4
        obs = observation(np.random.default_rng(4))
        r = post(s, msgpack_body(obs, committed_actions=COMMITTED))
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(actions_of(r)[:3], COMMITTED, atol=1e-6)
        np.testing.assert_allclose(actions_of(r), prefix_runner.predict({**obs, "committed_actions": COMMITTED}),
                                   atol=1e-4)
        assert post(s, json_body(obs, committed_actions=[[0.0, 0.0]] * 5)).status_code == 422
        np.testing.assert_allclose(actions_of(post(s, json_body(obs))), prefix_runner.predict(obs), atol=1e-4)
