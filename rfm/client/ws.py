"""One persistent /v1/ws connection for RFMClient(transport="ws"): a robot's requests without HTTP's per-request
framing and httpx's per-call work (about 0.9 ms less per request on loopback; docs/BENCHMARKS.md)."""

from __future__ import annotations

import threading
from ssl import SSLContext

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from rfm.client.wire import MSGPACK, decode_response


def ws_url(http_url: str) -> str:
    """http(s)://host:port[/prefix] -> ws(s)://host:port[/prefix]/v1/ws."""
    for scheme, ws in (("https://", "wss://"), ("http://", "ws://")):
        if http_url.startswith(scheme):
            return ws + http_url[len(scheme):].rstrip("/") + "/v1/ws"
    raise ValueError(f"url {http_url!r}: expected http://HOST:PORT or https://HOST:PORT")


class Refused(Exception):
    """The server refused the WebSocket handshake; `response` is its HTTP answer (401 for a wrong key, 503 with
    Retry-After while the model loads), to be handled as the same answer to a POST would be."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"the server refused the WebSocket with HTTP {response.status_code}")
        self.response = response


class WebSocketChannel:
    """Requests one at a time over one connection, each answered in its own frame in order. Any failure mid-request
    closes the connection, so a late answer can never be taken for the next request's; the next call reconnects."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float, fmt: str,
                 ssl: SSLContext | None = None) -> None:
        self.url, self.timeout, self.fmt = ws_url(url), timeout, fmt
        self.ssl = ssl if self.url.startswith("wss://") else None  # (websockets refuses one for ws://)
        self.headers = {k: v for k, v in headers.items() if k == "Authorization"}
        self._conn: ClientConnection | None = None
        self._lock = threading.Lock()  # the executor may ask from its prefetch thread and the robot's thread

    def request(self, body: bytes) -> dict:
        """Send one encoded observation; the decoded answer: {"actions": ...} or an in-band error {"error",
        "detail", "status"}. Raises ConnectionError when the connection fails (after closing it), Refused on a
        refused handshake, TimeoutError when no answer came within the client's timeout. A connection kept from
        an earlier request that turns out closed (a proxy or NAT dropped it while the robot was idle) is replaced
        and the request sent once more on the new one, so a robot with retries=0 does not lose that request."""
        with self._lock:
            for kept in (self._conn is not None, False):
                try:
                    conn = self._connect()
                    conn.send(body if self.fmt == "msgpack" else body.decode())
                    reply = conn.recv(timeout=self.timeout)
                    break
                except TimeoutError:
                    self.close()
                    raise
                except (ConnectionClosed, OSError) as e:
                    self.close()
                    if not kept:
                        raise ConnectionError(f"{self.url}: {e}") from e
        if isinstance(reply, bytes):
            return decode_response(reply, MSGPACK)
        return decode_response(reply.encode(), None)

    def _connect(self) -> ClientConnection:
        if self._conn is None:
            try:
                # pixels do not compress: deflate would cost milliseconds a request for nothing
                self._conn = connect(self.url, additional_headers=self.headers, compression=None,
                                     open_timeout=self.timeout, max_size=None, ssl=self.ssl)
            except InvalidStatus as e:
                r = e.response
                raise Refused(httpx.Response(r.status_code, headers=list(r.headers.raw_items()),
                                             content=bytes(r.body or b""))) from e
            except InvalidHandshake as e:
                raise ConnectionError(f"{self.url}: {e}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # safe on a connection that is already closed or broken
            self._conn = None
