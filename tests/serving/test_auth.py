"""API keys: Bearer and openpi's Api-Key header, 401 without, probes stay open."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets.sync.client as wsc
from websockets.exceptions import InvalidStatus

from serving.auth import ApiKeys, AuthError, key_id
from tests.serving.conftest import API_KEY
from tests.serving.helpers import msgpack_body, observation

MP = {"content-type": "application/msgpack"}


def act(server, auth: str | None) -> httpx.Response:
    headers = {**MP, **({"authorization": auth} if auth else {})}
    return httpx.post(server.url + "/v1/act", content=msgpack_body(observation()), headers=headers, timeout=30)


@pytest.mark.integration
@pytest.mark.parametrize("auth,status", [(None, 401), ("Bearer wrong-key-0123456789", 401), (API_KEY, 401),
                                         (f"Basic {API_KEY}", 401), (f"Bearer {API_KEY}", 200),
                                         (f"Api-Key {API_KEY}", 200), ("Bearer another-key-abcdefghijklmnop", 200)])
def test_http_keys(auth_server, auth, status):
    r = act(auth_server, auth)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert API_KEY not in r.text


@pytest.mark.integration
def test_probes_are_open_and_models_needs_a_key(auth_server):
    assert httpx.get(auth_server.url + "/healthz").status_code == 200
    assert httpx.get(auth_server.url + "/readyz").status_code == 200
    assert httpx.get(auth_server.url + "/v1/models").status_code == 401
    r = httpx.get(auth_server.url + "/v1/models", headers={"authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200


@pytest.mark.integration
def test_websockets_need_a_key(auth_server):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    base = auth_server.url.replace("http://", "ws://")
    for path in ("/v1/ws", "/openpi"):
        with pytest.raises(InvalidStatus) as info:
            wsc.connect(base + path)
        assert info.value.response.status_code == 401  # the handshake is refused as a POST would be
        assert json.loads(info.value.response.body)["error"] == "unauthorized"
    policy = WebsocketClientPolicy(host=base + "/openpi", api_key=API_KEY)
    obs = observation()
    out = policy.infer({"observation/image": obs["images"]["front"], "observation/wrist_image":
                        obs["images"]["wrist"], "observation/state": obs["state"], "prompt": "pick"})
    assert out["actions"].shape == (8, 2)
    with wsc.connect(base + "/v1/ws", additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        ws.send(msgpack_body(obs))
        assert len(ws.recv()) > 0


def test_key_file_parsing_and_ids(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\n\n  short  \n")
    with pytest.raises(ValueError, match="shorter than 16 characters"):
        ApiKeys.from_file(f)
    f.write_text("# only comments\n")
    with pytest.raises(ValueError, match="no API keys"):
        ApiKeys.from_file(f)
    with pytest.raises(FileNotFoundError, match="API key file not found"):
        ApiKeys.from_file(tmp_path / "missing")
    keys = ApiKeys(["k" * 20])
    assert keys.check("Bearer " + "k" * 20) == key_id("k" * 20) and "k" * 20 not in key_id("k" * 20)
    with pytest.raises(AuthError, match="missing API key"):
        keys.check(None)


@pytest.mark.integration
def test_a_refused_key_is_logged_with_the_callers_address(tiny_runner, tmp_path, caplog):
    """The audit log holds answered requests only: a wrong key is logged with the caller's address, the first
    refusal and then every 100th (a scan must not flood the log), never the key sent."""
    import logging

    from serving.config import ServerConfig
    from serving.server import ServerThread

    (tmp_path / "keys.txt").write_text(f"{API_KEY}\n")
    cfg = ServerConfig(max_batch=2, api_keys_file=str(tmp_path / "keys.txt"), warmup_batch_sizes=(1,))
    with ServerThread(tiny_runner, cfg) as server, caplog.at_level(logging.WARNING, logger="rfm.serving"):
        for _ in range(3):
            assert act(server, "Bearer wrong-key-0123456789").status_code == 401
        assert act(server, f"Bearer {API_KEY}").status_code == 200
        assert server.state.auth_failures == 3
    said = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert said == ["refused a request from 127.0.0.1: invalid API key (1 refused so far)"]
    assert "wrong-key" not in caplog.text
