"""POST /v1/act and the GET endpoints against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from PIL import Image

from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import audit_record, gated_loader, json_body, msgpack_body, observation

pytestmark = pytest.mark.integration  # a real uvicorn server

MP = {"content-type": "application/msgpack"}


def post(server, body, headers=None, **kw) -> httpx.Response:
    if isinstance(body, (bytes, bytearray)):
        return httpx.post(server.url + "/v1/act", content=body, headers=headers or MP, timeout=30, **kw)
    return httpx.post(server.url + "/v1/act", json=body, headers=headers, timeout=30, **kw)


def png_b64(img: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_msgpack_request_gets_msgpack_actions(server):
    obs = observation()
    r = post(server, msgpack_body(obs, request_id="req-1", robot_id="arm-7"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    out = msgpack.unpackb(r.content)
    actions = np.frombuffer(out["actions"]["data"], np.float32).reshape(out["actions"]["shape"])
    assert actions.shape == (8, 2) and out["action_names"] == ["vx", "vy"]
    assert out["request_id"] == "req-1" and r.headers["x-request-id"] == "req-1"
    assert out["model_id"] == "tiny" and len(out["model_version"]) == 12 and out["batch_size"] >= 1
    assert set(out["timings"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert out["timings"]["total_ms"] >= out["timings"]["inference_ms"]


def test_json_request_gets_json_and_clipping_is_flagged(server, tiny_runner):
    obs = observation()
    r = post(server, json_body(obs))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    out = r.json()
    actions = np.asarray(out["actions"])
    assert actions.shape == (8, 2) and len(out["request_id"]) == 32
    raw = tiny_runner.predict(obs)
    np.testing.assert_allclose(actions[:, 0], raw[:, 0], atol=1e-4)  # vx limits are wide: untouched
    assert np.all(np.abs(actions[:, 1]) <= 0.01 + 1e-6)  # vy clipped to [-0.01, 0.01]
    assert out["clipped"] is True and out["clipped_dims"] == ["vy"]


@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw_b64", "data_url", "raw_bytes_msgpack"])
def test_image_encodings(server, encoding):
    obs = observation()
    if encoding == "raw_bytes_msgpack":
        body = msgpack.packb({"images": {c: v.tobytes() for c, v in obs["images"].items()}, "state": [0, 0, 0]})
        assert post(server, body).status_code == 200
        return
    enc = {"png": lambda v: png_b64(v), "jpeg": lambda v: png_b64(v, "JPEG"),
           "data_url": lambda v: "data:image/png;base64," + png_b64(v),
           "raw_b64": lambda v: {"data": base64.b64encode(v.tobytes()).decode(), "shape": [64, 64, 3]}}[encoding]
    body = {"images": {c: enc(v) for c, v in obs["images"].items()}, "state": [0.1, 0.2, 0.3], "instruction": "go"}
    r = post(server, body)
    assert r.status_code == 200, r.text


def _bad_cases():
    obs = observation()
    good = json_body(obs)
    img = obs["images"]["front"]

    def with_images(**images):
        return {**good, "images": {**good["images"], **images}}

    return [
        ("unknown camera", {**good, "images": {"frnt": good["images"]["front"], "wrist": good["images"]["wrist"]}},
         None, 422, r"unknown camera 'frnt'.*expects \['front', 'wrist'\].*Did you mean 'front'"),
        ("missing camera", {**good, "images": {"front": good["images"]["front"]}}, None, 422,
         r"missing camera\(s\) \['wrist'\]"),
        ("wrong image size", with_images(front=img[:32].tolist()), None, 422,
         r"image 'front' is 32x64 \(H x W\): expected the model's input size 64x64"),
        ("wrong state length", {**good, "state": [1.0, 2.0]}, None, 422, r"state has 2 values, the model expects 3"),
        ("NaN state", json.dumps({**good, "state": [1.0, float("nan"), 0.0]}).encode(),
         {"content-type": "application/json"}, 422, r"non-finite values \(NaN/inf\) or values beyond .* in \['y'\]"),
        ("inf state (msgpack)", msgpack_body({**obs, "state": np.array([np.inf, 0, 0])}), MP, 422, r"NaN/inf"),
        ("undecodable image", with_images(front=base64.b64encode(b"not an image at all").decode()), None, 422,
         r"image 'front': cannot decode image \(19 bytes\): expected a JPEG or PNG"),
        ("bad base64", with_images(front="!!!not base64!!!"), None, 422, r"image 'front': invalid base64"),
        ("pixel out of range", with_images(front=[[[300, 0, 0]] * 64] * 64), None, 422, r"integers 0-255"),
        ("raw size mismatch", with_images(front={"data": base64.b64encode(b"xx").decode(), "shape": [64, 64, 3]}),
         None, 422, r"needs 12288 bytes, 'data' has 2"),
        ("object dtype", with_images(front={"data": "", "shape": [0], "dtype": "object"}), None, 422,
         r"'dtype' must be one of \['uint8', '\|u1'\]"),
        ("missing state", {"images": good["images"]}, None, 422, r"'state' is missing"),
        ("images not a map", {**good, "images": [1, 2]}, None, 422, r"'images' must be an object"),
        ("bad request_id", {**good, "request_id": "x" * 500}, None, 422, r"'request_id' must be a string of 1-128 printable ASCII"),
        ("body not an object", [1, 2, 3], None, 422, r"body must be an object"),
        ("misspelt optional field", {**good, "sucess": True}, None, 422,
         r"unknown field 'sucess': the fields are .* Did you mean 'success'"),
        ("invalid JSON", b"{not json", {"content-type": "application/json"}, 422, r"body is not valid JSON"),
        ("invalid msgpack", b"\xc1\xc1\xc1", MP, 422, r"body is not valid msgpack"),
        ("wrong content type", b"images=1", {"content-type": "text/plain"}, 415,
         r"Content-Type 'text/plain' is not supported: send 'application/json' or 'application/msgpack'"),
        ("no content type", b"{}", {"content-type": ""}, 415, r"is not supported"),
        ("body too large", b"x" * (3 * 1024 * 1024), MP, 413, r"body is 3145728 bytes, the limit is 2097152"),
    ]


@pytest.mark.parametrize("name,body,headers,status,pattern", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_gets_status_and_message_and_server_goes_on(server, name, body, headers, status, pattern):
    import re

    r = post(server, body, headers)
    assert r.status_code == status, r.text
    err = r.json()
    assert re.search(pattern, err["detail"]), err["detail"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert post(server, msgpack_body(observation())).status_code == 200  # the next good request still works


def test_concurrent_requests_are_batched_and_routed_back_correctly(server, tiny_runner):
    rng = np.random.default_rng(1)
    observations = [observation(rng, instruction=f"task {i % 3}") for i in range(16)]
    barrier = threading.Barrier(16)

    def one(i):
        barrier.wait()
        return post(server, msgpack_body(observations[i], request_id=f"r{i}"))

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(16)))
    outs = [msgpack.unpackb(r.content) for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert [o["request_id"] for o in outs] == [f"r{i}" for i in range(16)]
    assert max(o["batch_size"] for o in outs) > 1
    expected = tiny_runner.predict(observations)
    for i, o in enumerate(outs):
        got = np.frombuffer(o["actions"]["data"], np.float32).reshape(8, 2)
        np.testing.assert_allclose(got[:, 0], expected[i, :, 0], atol=1e-4)


def test_models_health_ready_docs(server):
    m = httpx.get(server.url + "/v1/models").json()
    assert m["cameras"] == ["front", "wrist"] and m["image_size"] == [64, 64]
    assert m["state_dim"] == 3 and m["action_dim"] == 2 and m["chunk_size"] == 8 and m["control_hz"] == 10.0
    assert m["state_names"] == ["x", "y", "z"] and m["action_names"] == ["vx", "vy"]
    assert m["model_id"] == "tiny" and m["server"]["max_batch"] == 8
    assert m["server"]["engine_next"] is None  # a runner given as such: no engine is coming
    assert m["server"]["action_limits"]["max"] == [100.0, 0.01]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    for page in ("/docs", "/redoc"):  # served from the package: an offline fleet network still gets its API page
        html = httpx.get(server.url + page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and not [a for a in assets if "://" in a or a.startswith("//")], assets
        for a in assets:
            assert httpx.get(server.url + a).status_code == 200, a
    spec = httpx.get(server.url + "/openapi.json").json()
    content = spec["paths"]["/v1/act"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/msgpack"}
    assert "ActRequestBody" in spec["components"]["schemas"]


def test_metrics_reflect_traffic(server):
    post(server, msgpack_body(observation()))
    post(server, {"images": {}, "state": []})
    text = httpx.get(server.url + "/metrics").text
    for needle in ['rfm_requests_total{endpoint="/v1/act",status="200"}',
                   'rfm_requests_total{endpoint="/v1/act",status="422"}',
                   'rfm_request_latency_seconds_bucket{endpoint="/v1/act"', "rfm_batch_size_bucket",
                   "rfm_inference_seconds_count", "rfm_queue_depth", "rfm_ready 1.0", "rfm_actions_clipped_total"]:
        assert needle in text, needle
    count = float(text.split('rfm_requests_total{endpoint="/v1/act",status="200"} ')[1].split()[0])
    post(server, msgpack_body(observation()))
    text2 = httpx.get(server.url + "/metrics").text
    assert float(text2.split('rfm_requests_total{endpoint="/v1/act",status="200"} ')[1].split()[0]) == count + 1


def test_audit_log_records_requests_without_secrets(server):
    post(server, msgpack_body(observation(instruction="audit me"), request_id="audit-1", robot_id="arm-3",
                              session_id="s-9"))
    rec = audit_record(server.audit_path, "audit-1", timeout_s=5)
    assert rec is not None
    assert rec["robot_id"] == "arm-3" and rec["session_id"] == "s-9" and rec["instruction"] == "audit me"
    assert rec["instruction_run"] == "audit me"  # no --snap-instructions: the model runs what was sent
    assert rec["model_version"] and rec["client_id"] is None and rec["endpoint"] == "/v1/act"
    assert rec["actions"]["shape"] == [8, 2] and len(rec["actions"]["first"]) == 2
    assert rec["clipped_dims"] == ["vy"] and "total_ms" in rec["timings"] and rec["time"].endswith("+00:00")


def test_refused_requests_are_audited_with_why_and_unkeyed_ones_are_not(server, tiny_runner, tmp_path):
    """Why a robot got no actions, and when, is in the audit log beside the answered requests; a sender without a
    valid key cannot grow it."""
    import websockets.sync.client as wsc

    r = post(server, msgpack_body({**observation(), "state": np.zeros(5)}, request_id="refused-1", robot_id="arm-4",
                                  session_id="s-4"))
    assert r.status_code == 422
    rec = audit_record(server.audit_path, "refused-1", timeout_s=5)
    assert rec is not None and (rec["status"], rec["error"], rec["endpoint"]) == (422, "invalid_observation", "/v1/act")
    assert (rec["robot_id"], rec["session_id"]) == ("arm-4", "s-4") and "state has 5 values" in rec["detail"]
    assert rec["model_id"] == "tiny" and rec["timings"]["total_ms"] > 0 and "actions" not in rec
    assert post(server, b"\xc1 not msgpack", headers={**MP, "X-Request-ID": "proxy-refused"}).status_code == 422
    rec = audit_record(server.audit_path, "proxy-refused", timeout_s=5)  # undecodable: the proxy's id names it
    assert rec is not None and rec["error"] == "invalid_payload" and rec["robot_id"] is None
    ws_url = server.url.replace("http://", "ws://")
    with wsc.connect(ws_url + "/v1/ws", max_size=None) as ws:
        ws.send(msgpack_body({**observation(), "state": np.zeros(5)}, request_id="ws-refused", robot_id="arm-5"))
        assert msgpack.unpackb(ws.recv())["status"] == 422
    rec = audit_record(server.audit_path, "ws-refused", timeout_s=5)
    assert rec is not None and (rec["endpoint"], rec["robot_id"], rec["status"]) == ("/v1/ws", "arm-5", 422)
    with wsc.connect(ws_url + "/openpi", max_size=None) as ws:
        ws.recv()  # the server's metadata
        ws.send("not a msgpack frame")
        assert ws.recv().startswith("422 invalid_payload")
    deadline = time.monotonic() + 5
    while not (openpi := [json.loads(ln) for ln in server.audit_path.read_text().splitlines()
                          if '"/openpi"' in ln]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert openpi and openpi[-1]["status"] == 422 and openpi[-1]["session_id"].startswith("openpi-")
    assert post(server, msgpack_body(observation(), request_id="answered")).status_code == 200
    assert audit_record(server.audit_path, "answered")["status"] == 200  # the answered ones say so too

    (tmp_path / "keys.txt").write_text("fleet-key-0123456789abcdef\n")
    cfg = ServerConfig(api_keys_file=str(tmp_path / "keys.txt"), audit_log=str(tmp_path / "audit.jsonl"),
                       warmup_batch_sizes=(1,))
    with ServerThread(tiny_runner, cfg) as keyed:
        bad = {**observation(), "state": np.zeros(5)}
        assert post(keyed, msgpack_body(bad, request_id="no-key")).status_code == 401
        keyed_headers = {**MP, "authorization": "Bearer fleet-key-0123456789abcdef"}
        assert post(keyed, msgpack_body(bad, request_id="keyed"), headers=keyed_headers).status_code == 422
        rec = audit_record(tmp_path / "audit.jsonl", "keyed", timeout_s=5)
        assert rec is not None and rec["client_id"].startswith("key-")
    assert '"no-key"' not in (tmp_path / "audit.jsonl").read_text()


def _audited(path: Path, request_id: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists() and f'"{request_id}"' in path.read_text():
            return True
        time.sleep(0.05)
    return False


def test_audit_log_follows_a_rotation_and_drops_rather_than_hoards_when_the_disk_stalls(tiny_runner, tmp_path):
    """logrotate renames the log and creates a new one (or leaves it to the server): the server opened the file
    once, so it kept writing into the renamed one for ever. It now writes to the file at the path."""
    from serving.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    with ServerThread(tiny_runner, ServerConfig(max_batch=2, warmup_batch_sizes=(1,), audit_log=str(path))) as s:
        post(s, msgpack_body(observation(), request_id="before"))
        assert _audited(path, "before")
        path.rename(tmp_path / "audit.jsonl.1")  # rotated, no new file created
        post(s, msgpack_body(observation(), request_id="after"))
        assert _audited(path, "after") and "before" not in path.read_text()
        assert '"after"' not in (tmp_path / "audit.jsonl.1").read_text()
    stalled = AuditLog(tmp_path / "stalled.jsonl", max_queued=0)  # a queue that cannot take one more record
    stalled.write({"request_id": "x"})
    stalled.close()
    assert stalled.dropped == 1 and (tmp_path / "stalled.jsonl").read_text() == ""


def test_resize_images_option(tiny_runner):
    obs = observation()
    big = {c: np.zeros((96, 128, 3), np.uint8) for c in obs["images"]}
    with ServerThread(tiny_runner, ServerConfig(max_batch=2, resize_images=True, warmup_batch_sizes=(1,))) as s:
        r = post(s, msgpack_body({**obs, "images": big}))
        assert r.status_code == 200, r.text


def test_readyz_is_503_until_warm_and_reports_load_failures(tiny_runner):
    slow_loader, gate = gated_loader(tiny_runner)
    s = ServerThread(slow_loader, ServerConfig(max_batch=2, warmup_batch_sizes=(1,))).start(wait_ready=False)
    try:
        assert httpx.get(s.url + "/healthz").status_code == 200
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = post(s, msgpack_body(observation()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 30
        while httpx.get(s.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post(s, msgpack_body(observation())).status_code == 200
    finally:
        s.stop()

    def broken_loader():
        raise FileNotFoundError("/nowhere/ckpt: checkpoint directory not found")

    with ServerThread(broken_loader, ServerConfig(max_batch=2)) as s:
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "checkpoint directory not found" in r.json()["detail"]


def test_an_image_declaring_billions_of_pixels_is_a_422(server):
    """A 100-byte PNG declaring 20000 x 20000 pixels: Pillow refuses it before the server's own size check (it was a
    500 with a traceback in the log); now a 422 naming the camera, and the server keeps serving."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))
    obs = observation()
    body = {"images": {c: png_b64(v) for c, v in obs["images"].items()}, "state": [0.1, 0.2, 0.3], "instruction": "go"}
    body["images"]["front"] = base64.b64encode(bomb).decode()
    r = post(server, body)
    assert r.status_code == 422 and "image 'front'" in r.text and "pixels allowed" in r.text, r.text
    assert post(server, {**body, "images": {c: png_b64(v) for c, v in obs["images"].items()}}).status_code == 200


def test_an_unknown_path_or_method_answers_json_like_every_error(server):
    r = httpx.get(server.url + "/v1/nope")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "GET /v1/nope: Not Found"}
    r = httpx.delete(server.url + "/v1/models")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
