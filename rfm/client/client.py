"""RFMClient / AsyncRFMClient: `act(obs) -> (H, D_a)` over HTTP (or, RFMClient(transport="ws"), one WebSocket),
msgpack by default, retrying 503s politely."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from rfm.client.frames import FrameFitter
from rfm.client.tls import Verify, ssl_context
from rfm.client.wire import JSON, MSGPACK, RETRY_STATUS, check_structure, decode_response, encode_observation
from rfm.client.ws import Refused, WebSocketChannel

RETRYABLE = (503,)  # the server's own answers a request is asked again after: busy, or starting (its 504, a
# missed deadline, is not: a robot acts on its next observation); a proxy's pages of RETRY_STATUS are retried too


class RFMError(Exception):
    """The server answered with an error; `status`, `code` and `detail` say which and why."""

    def __init__(self, status: int, code: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.request_id = status, code, detail, request_id


def _retryable(resp: httpx.Response) -> bool:
    """Whether asking again may be answered: the server's 503, or a proxy's 429/502/503/504 (not JSON: its page)."""
    if resp.status_code in RETRYABLE:
        return True
    return resp.status_code in RETRY_STATUS and not resp.headers.get("content-type", "").startswith(JSON)


def _error(resp: httpx.Response) -> RFMError:
    try:
        body = resp.json()
    except ValueError:
        return _foreign_error(resp)
    if not isinstance(body, dict) or "error" not in body:
        return _foreign_error(resp)
    return RFMError(resp.status_code, str(body["error"]), str(body.get("detail", body)), body.get("request_id"))


def _foreign_error(resp: httpx.Response) -> RFMError:
    """An answer that is not rfm's JSON error: a proxy or load balancer in front of the server gave it (its own
    HTML page). Says so, with the page's title rather than its markup, and what to change for a 413."""
    text = resp.text
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    what = " ".join((title.group(1) if title else text).split())[:200]
    try:
        sent = f"; the request body was {len(resp.request.content):,} bytes"
    except (RuntimeError, AttributeError):  # (no request: a refused WebSocket handshake)
        sent = ""
    hint = (": raise the proxy's body limit (nginx: client_max_body_size) to the server's max_body_bytes "
            "(GET /v1/models)") if resp.status_code == 413 else ""
    return RFMError(resp.status_code, "proxy_error", f"{what!r}, not an rfm answer: something between the robot "
                                                      f"and the server (a proxy?) answered{sent}{hint}")


def _retry_after(resp: httpx.Response | None, attempt: int, cap: float) -> float:
    """Seconds to wait before the next try: the server's Retry-After, else exponential backoff from 50 ms."""
    if resp is not None:
        try:
            return min(cap, max(0.0, float(resp.headers.get("retry-after", ""))))
        except ValueError:
            pass
    return min(cap, 0.05 * 2 ** attempt)


class _Base:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, format: str = "msgpack",
                 timeout: float = 10.0, retries: int = 3, max_retry_wait: float = 5.0, robot_id: str | None = None,
                 session_id: str | None = None, deadline_ms: float | None = None, fit_frames: bool = True,
                 verify: Verify = True) -> None:
        """`deadline_ms`: each request is answered within it or refused at once with 503 (a robot acting in real
        time would rather act on its next observation than wait for this one). `fit_frames`: fit native-size
        frames to the model's input size here, as the server would (rfm.client.frames; needs Pillow), so they
        travel small and the shared server does not spend its time resizing. `verify` (https:// URLs): True for
        the system's trust store, a CA bundle's path (a fleet's own CA), an ssl.SSLContext, or False (no check)."""
        if format not in ("msgpack", "json"):
            raise ValueError(f"format={format!r}: expected 'msgpack' or 'json'")
        self.url, self.format, self.timeout = url.rstrip("/"), format, timeout
        self.retries, self.max_retry_wait = retries, max_retry_wait
        self.robot_id, self.session_id, self.deadline_ms = robot_id, session_id, deadline_ms
        self.fit_frames = fit_frames
        self.ssl = ssl_context(verify)  # None: httpx's and websockets' own defaults
        self._fitter: FrameFitter | None = None  # from the served model's description, on the first request
        self._fitter_tried = -math.inf  # when the description was last asked for (again at most once a second)
        self.headers = {"Content-Type": MSGPACK if format == "msgpack" else JSON}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _outcome(self, resp: httpx.Response | None, attempt: int) -> dict | float:
        """The decoded answer on 200; else seconds to wait before retrying; raises RFMError when not retryable."""
        if resp is not None and resp.status_code == 200:
            return decode_response(resp.content, resp.headers.get("content-type"))
        if resp is not None and (not _retryable(resp) or attempt == self.retries):
            raise _error(resp)
        return _retry_after(resp, attempt, self.max_retry_wait)

    def _body(self, obs: Mapping[str, Any], request_id: str | None) -> bytes:
        check_structure(obs)  # before fitting frames: a malformed observation is a ValueError naming the field
        if self._fitter is not None:
            obs = self._fitter.observation(obs)
        return encode_observation(obs, self.format, self.deadline_ms, request_id=request_id, robot_id=self.robot_id,
                                  session_id=self.session_id)

    def _wants_description(self) -> bool:
        """Whether to ask the server for the model's description before this request (to fit frames)."""
        if not self.fit_frames or self._fitter is not None or time.monotonic() - self._fitter_tried < 1.0:
            return False
        self._fitter_tried = time.monotonic()
        return True

    def _set_description(self, description: Mapping[str, Any]) -> None:
        self._fitter = FrameFitter(description)


class RFMClient(_Base):
    """Synchronous client. `act(obs)` returns the action chunk; `infer(obs)` the whole response dict.

    transport="http" (default) sends each observation as a POST /v1/act; "ws" keeps one /v1/ws WebSocket open for
    act/infer (the lower latency for a robot asking many times a second), reopened when it drops. Everything else
    (models, ready, TickRecorder) stays on HTTP."""

    def __init__(self, url: str = "http://127.0.0.1:8000", transport: str = "http", **kw: Any) -> None:
        if transport not in ("http", "ws"):
            raise ValueError(f"transport={transport!r}: expected 'http' or 'ws'")
        super().__init__(url, **kw)
        self.transport = transport
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout, verify=self.ssl or True)
        self._ws = WebSocketChannel(self.url, self.headers, self.timeout, self.format, self.ssl) \
            if transport == "ws" else None

    def infer(self, obs: Mapping[str, Any], request_id: str | None = None) -> dict:
        if self._wants_description():
            try:
                self._set_description(self.models())
            except (RFMError, httpx.HTTPError, ValueError):  # not up yet: frames go as they are, asked again later
                pass
        body = self._body(obs, request_id)
        attempt_once = self._attempt_http if self._ws is None else self._attempt_ws
        for attempt in range(self.retries + 1):
            out = attempt_once(body, attempt)
            if isinstance(out, dict):
                return out
            time.sleep(out)
        raise AssertionError("unreachable")

    def _attempt_http(self, body: bytes, attempt: int) -> dict | float:
        """One POST /v1/act: the answer, or seconds to wait before the next try (RFMError when not retryable)."""
        resp = None
        try:
            resp = self._http.post("/v1/act", content=body, headers=self.headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError):
            if attempt == self.retries:
                raise
        return self._outcome(resp, attempt)

    def _attempt_ws(self, body: bytes, attempt: int) -> dict | float:
        """One request over the WebSocket, as _attempt_http: in-band errors become RFMError, 503s and dropped
        connections are retried, a refused handshake is handled as the same answer to a POST."""
        try:
            out = self._ws.request(body)
        except Refused as e:  # 401, or 503 + Retry-After while the model loads
            return self._outcome(e.response, attempt)
        except ConnectionError:
            if attempt == self.retries:
                raise
            return self._outcome(None, attempt)
        if "error" not in out:
            return out
        status = int(out.get("status", 500))
        if status not in RETRYABLE or attempt == self.retries:
            raise RFMError(status, str(out["error"]), str(out.get("detail", "")), out.get("request_id"))
        return _retry_after(None, attempt, self.max_retry_wait)

    def act(self, obs: Mapping[str, Any], request_id: str | None = None) -> np.ndarray:
        """One observation -> action chunk (H, D_a) float32 in robot units."""
        return self.infer(obs, request_id)["actions"]

    def models(self) -> dict:
        resp = self._http.get("/v1/models", headers=self.headers)
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        t_end = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > t_end:
                raise TimeoutError(f"{self.url} not ready after {timeout} s")
            time.sleep(0.2)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
        self._http.close()

    def __enter__(self) -> RFMClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRFMClient(_Base):
    """asyncio client with the same methods as RFMClient, as coroutines."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **kw: Any) -> None:
        super().__init__(url, **kw)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, verify=self.ssl or True)

    async def infer(self, obs: Mapping[str, Any], request_id: str | None = None) -> dict:
        if self._wants_description():
            try:
                self._set_description(await self.models())
            except (RFMError, httpx.HTTPError, ValueError):  # not up yet: frames go as they are, asked again later
                pass
        body = self._body(obs, request_id)
        for attempt in range(self.retries + 1):
            resp = None
            try:
                resp = await self._http.post("/v1/act", content=body, headers=self.headers)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                if attempt == self.retries:
                    raise
            out = self._outcome(resp, attempt)
            if isinstance(out, dict):
                return out
            await asyncio.sleep(out)
        raise AssertionError("unreachable")

    async def act(self, obs: Mapping[str, Any], request_id: str | None = None) -> np.ndarray:
        return (await self.infer(obs, request_id))["actions"]

    async def models(self) -> dict:
        resp = await self._http.get("/v1/models", headers=self.headers)
        if resp.status_code != 200:
            raise _error(resp)
        return resp.json()

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRFMClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
