"""A fleet reaches its server through a proxy (nginx, an ingress, a load balancer): the SDK rides out what the proxy
answers while the server restarts, says when an answer came from the proxy and not from rfm, keeps a robot's
WebSocket through the proxy's idle timeout, and speaks TLS with a fleet's own CA; the server tells a proxy that
drops WebSocket upgrades what to change, and serves its docs under the proxy's path prefix."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from rfm.client import RFMClient, RFMError
from serving.config import ServerConfig
from serving.server import ServerThread
from tests.serving.helpers import audit_record, observation
from tests.serving.tcp_proxy import TcpProxy, self_signed

pytestmark = pytest.mark.integration  # a real server behind a real socket proxy


def test_the_sdk_retries_what_a_proxy_answers_while_the_server_restarts(server, tiny_runner):
    """nginx answers 502 while its upstream is down (a direct connection would be refused, which was retried): the
    SDK raised at once. 502, 504 and 429 are now retried like 503, over HTTP and before a WebSocket opens."""
    obs = observation()
    with TcpProxy(server.port) as proxy:
        for transport in ("http", "ws"):
            proxy.answer_next(2, 502, "Bad Gateway")
            with RFMClient(proxy.url, transport=transport, fit_frames=False) as robot:
                np.testing.assert_allclose(robot.act(obs)[:, 0], tiny_runner.predict(obs)[:, 0], atol=1e-4)
            proxy.answer_next(1, 504, "Gateway Time-out")
            with RFMClient(proxy.url, transport=transport, fit_frames=False, retries=0) as robot, \
                    pytest.raises(RFMError) as e:  # out of retries: the proxy's answer, said as one
                robot.act(obs)
            assert e.value.status == 504 and e.value.code == "proxy_error"


def test_an_answer_from_the_proxy_says_so_and_what_to_change(server):
    """A body over nginx's 1 MB default came back as '413 error: <html>...' with no word of a proxy or a limit."""
    with TcpProxy(server.port) as proxy, RFMClient(proxy.url, fit_frames=False) as robot:
        proxy.answer_next(1, 413, "Request Entity Too Large")
        with pytest.raises(RFMError) as e:
            robot.act(observation())
    assert e.value.status == 413 and e.value.code == "proxy_error" and "<html>" not in str(e.value)
    assert "'413 Request Entity Too Large', not an rfm answer" in e.value.detail
    assert "client_max_body_size" in e.value.detail and "the request body was " in e.value.detail


def test_a_websocket_the_proxy_dropped_while_the_robot_was_idle_is_replaced_without_losing_the_request(server):
    """A proxy closes a WebSocket idle past its read timeout: a robot with retries=0 (real time: no waiting) lost
    its next request to 'no close frame received or sent'. The closed connection is replaced and the request sent
    on the new one."""
    obs = observation()
    with TcpProxy(server.port) as proxy, RFMClient(proxy.url, transport="ws", retries=0, fit_frames=False) as robot:
        first = robot.act(obs)
        proxy.drop_connections()
        np.testing.assert_allclose(robot.act(obs), first, atol=1e-5)
        assert proxy.connections == 2


def test_a_proxy_that_drops_websocket_upgrades_is_told_what_to_change(server):
    """Without the Upgrade and Connection headers a WebSocket handshake reaches the server as a plain GET: it was a
    404 'not found' for a path that exists. Now 426, naming the proxy settings; the SDK raises it as such."""
    for path in ("/v1/ws", "/openpi", "/"):
        r = httpx.get(server.url + path)
        assert r.status_code == 426 and r.headers["upgrade"] == "websocket", path
        assert r.json()["error"] == "upgrade_required" and "proxy_set_header Upgrade" in r.json()["detail"]
    assert httpx.get(server.url + "/v1/nothing").status_code == 404


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_through_a_terminating_proxy_with_a_fleets_own_ca(server, tiny_runner, tmp_path):
    """https:// and wss:// to a proxy holding a certificate of the fleet's own CA: RFMClient(verify=CA_BUNDLE)
    checks it (there was no way to pass one); the system's trust store refuses it; verify=False skips the check."""
    cert, tls = self_signed(tmp_path)
    obs = observation()
    with TcpProxy(server.port, tls=tls) as proxy:
        for transport in ("http", "ws"):
            with RFMClient(proxy.url, transport=transport, verify=str(cert), fit_frames=False) as robot:
                np.testing.assert_allclose(robot.act(obs)[:, 0], tiny_runner.predict(obs)[:, 0], atol=1e-4)
            with RFMClient(proxy.url, transport=transport, verify=False, retries=0, fit_frames=False) as robot:
                assert robot.act(obs).shape == (8, 2)
            with RFMClient(proxy.url, transport=transport, retries=0, fit_frames=False) as robot, \
                    pytest.raises((httpx.ConnectError, ConnectionError), match="CERTIFICATE_VERIFY_FAILED"):
                robot.act(obs)
    with pytest.raises(FileNotFoundError, match="no CA bundle there"):
        RFMClient(proxy.url, verify=str(tmp_path / "missing.pem"))


def test_the_docs_behind_a_path_prefix_load_their_schema_from_under_it(tiny_runner):
    """`location /rfm/ { proxy_pass http://server/; }`: /rfm/docs asked the browser for /openapi.json at the host's
    root (404). `rfm serve --root-path /rfm` makes the docs, and the schema's servers, name the prefix."""
    with ServerThread(tiny_runner, ServerConfig(root_path="/rfm", warmup_batch_sizes=(1,))) as s:
        assert "'/rfm/openapi.json'" in httpx.get(s.url + "/docs").text
        assert httpx.get(s.url + "/openapi.json").json()["servers"] == [{"url": "/rfm"}]
        with RFMClient(s.url, fit_frames=False) as robot:  # the proxy strips the prefix: the API is unchanged
            assert robot.act(observation()).shape == (8, 2)


def test_robots_addresses_come_from_the_proxies_the_server_is_told_to_trust(tiny_runner, tmp_path, caplog):
    """Behind a proxy every robot has the proxy's address: X-Forwarded-For names the robot, taken from the proxies
    `--forwarded-allow-ips` lists (127.0.0.1 by default; an ingress elsewhere must be named) and from no other."""
    import logging

    (tmp_path / "keys.txt").write_text("fleet-key-0123456789abcdef\n")
    seen = {}
    for trusted in (None, "10.0.0.0/8"):
        cfg = ServerConfig(api_keys_file=str(tmp_path / "keys.txt"), forwarded_allow_ips=trusted,
                           warmup_batch_sizes=(1,))
        with ServerThread(tiny_runner, cfg) as s, caplog.at_level(logging.WARNING, logger="rfm.serving"):
            caplog.clear()
            r = httpx.post(s.url + "/v1/act", headers={"X-Forwarded-For": "192.0.2.7"}, content=b"{}")
            assert r.status_code == 401
            seen[trusted] = caplog.text
    assert "refused a request from 192.0.2.7" in seen[None]  # the proxy on loopback is trusted by default
    assert "refused a request from 127.0.0.1" in seen["10.0.0.0/8"]  # a sender outside the list is not believed


def test_a_proxys_request_id_names_the_request_in_the_answer_and_the_audit_log(server):
    """nginx's $request_id (X-Request-ID) was ignored, so its log and the audit log could not be joined, and an
    error answer carried no id at all. The body's own request_id still wins. The audit log names the sender."""

    from tests.serving.helpers import msgpack_body

    msgpack = {"content-type": "application/msgpack"}
    ok = httpx.post(server.url + "/v1/act", content=msgpack_body(observation()),
                    headers={**msgpack, "X-Request-ID": "ngx-7f3a", "X-Forwarded-For": "192.0.2.9"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "ngx-7f3a"
    audited = audit_record(server.audit_path, "ngx-7f3a")
    assert audited is not None and audited["address"] == "192.0.2.9"  # the robot's, not the proxy's
    own = httpx.post(server.url + "/v1/act", content=msgpack_body(observation(), request_id="robot-1"),
                     headers={**msgpack, "X-Request-ID": "ngx-7f3b"})
    assert own.headers["x-request-id"] == "robot-1"
    bad = httpx.post(server.url + "/v1/act", content=b"\x93", headers={**msgpack, "X-Request-ID": "ngx-7f3c"})
    assert bad.status_code in (400, 422) and bad.headers["x-request-id"] == "ngx-7f3c"
    assert bad.json()["request_id"] == "ngx-7f3c"
    odd = httpx.post(server.url + "/v1/act", content=msgpack_body(observation()),
                     headers={**msgpack, "X-Request-ID": "x" * 500})  # not an id: ignored, not refused
    assert odd.status_code == 200 and odd.headers["x-request-id"] != "x" * 500

