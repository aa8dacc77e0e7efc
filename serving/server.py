"""Run the app under uvicorn: as the `rfm serve` process, or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from rfm.runtime import Runner
from serving.app import create_app
from serving.config import ServerConfig
from serving.memory import limit_arenas
from serving.open_files import fit_connections

log = logging.getLogger("rfm.serving")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_threads(n: int | None) -> int:
    """Intra-op threads of the torch backend; default: all cores but one, which the event loop keeps.

    On a 2-core machine 2 threads are ~1.5x faster at batch 32 when nothing else runs, but as soon as anything
    else wants a core (the event loop decoding requests, a neighbour) OpenMP's barriers stall: 60-100x slower
    in our measurements (docs/BENCHMARKS.md). One thread degrades gracefully instead.
    """
    n = n or max(1, (os.cpu_count() or 1) - 1)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # an ONNX-only deployment
        pass
    return n


def runner_loader(checkpoint: str | Path, backend: str = "torch", **kw) -> Callable[[], Runner]:
    """A callable loading the runner (called in the app's start-up thread)."""
    from rfm.runtime import load_runner

    return lambda: load_runner(checkpoint, backend=backend, **kw)


def uvicorn_config(app, host: str, port: int, config: ServerConfig, log_level: str = "info") -> uvicorn.Config:
    # No uvicorn limit_concurrency: it counts every open connection, robots' WebSockets and silent sockets too, and
    # answers any request past it with a plain-text 503, health probes and metrics included. WebSockets are capped
    # by --max-connections in serving.ws, inference by the batcher's queue; a socket that sends nothing is closed.
    cfg = uvicorn.Config(app, host=host, port=port, workers=1, log_level=log_level, access_log=False,
                         ws_max_size=config.max_ws_message_bytes, ws_ping_interval=20.0, ws_ping_timeout=20.0,
                         ws_per_message_deflate=False,  # pixels do not compress: deflate cost ~4 ms a request
                         timeout_graceful_shutdown=int(config.shutdown_drain_s) + 1, server_header=False,
                         http=_silent_sockets_time_out(), timeout_keep_alive=IDLE_S, root_path=config.root_path,
                         forwarded_allow_ips=config.forwarded_allow_ips)
    error_log = logging.getLogger("uvicorn.error")  # (configured by uvicorn.Config just above)
    if not any(isinstance(f, _ConnectionLines) for f in error_log.filters):
        error_log.addFilter(_ConnectionLines())
    return cfg


class _ConnectionLines(logging.Filter):
    """uvicorn's per-WebSocket lines ('"WebSocket /v1/ws" [accepted]', 'connection open', 'connection closed') at
    debug level only: a fleet's reconnects made them 6,240 of a server log's 6,252 lines, burying its warnings.
    rfm_websocket_connections in /metrics counts the connections."""

    NOISE = ("connection open", "connection closed")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        msg = record.getMessage()
        if msg in self.NOISE or (msg.endswith("[accepted]") and '"WebSocket ' in msg):
            return logging.getLogger("uvicorn.error").isEnabledFor(logging.DEBUG)
        return True


IDLE_S = 5  # a connection that sends nothing for this long, before its first request or between requests, is closed
HEAD_S = 10  # a request's line and headers must arrive within this long of its first byte, else the socket is closed


@functools.cache
def _silent_sockets_time_out() -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11) with two deadlines uvicorn lacks:
    - its keep-alive timeout also runs from the moment a connection opens: uvicorn starts it only after a first
      response, so sockets that never send a request stayed open for good, and enough of them exhausted the server's
      file descriptors;
    - (httptools) a request's head must be complete HEAD_S after its first byte: a client trickling a byte every few
      seconds (slowloris) kept resetting the idle timeout and held its connection for ever.
    A body is held to a deadline where it is read (serving.app.read_body)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class SilentSocketsTimeOut(Base):  # type: ignore[misc, valid-type]
        head_deadline = None

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def on_message_begin(self) -> None:  # httptools: the first byte of a request
            super().on_message_begin()
            self._end_head_deadline()
            self.head_deadline = self.loop.call_later(HEAD_S, self.timeout_keep_alive_handler)

        def on_headers_complete(self) -> None:
            self._end_head_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
            self._end_head_deadline()
            super().connection_lost(exc)

        def _end_head_deadline(self) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

    return SilentSocketsTimeOut


class DrainingServer(uvicorn.Server):
    """uvicorn's server, stopping gracefully for WebSocket robots too: on SIGTERM/SIGINT it first refuses new
    requests (503, /readyz says draining) and waits until every request taken over a WebSocket is answered (at most
    shutdown_drain_s), then lets uvicorn shut down, which closes WebSockets at once (1012) and would drop answers
    still being computed. HTTP requests in flight are waited for by uvicorn itself. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        self.rfm_state = state
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self.loop = asyncio.get_running_loop()  # where drain() must run when called from another thread
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
        state = self.rfm_state
        if self.should_exit or state.draining:  # a second signal: uvicorn's own way (force exit)
            super().handle_exit(sig, frame)
            return
        state.draining = True
        log.info("stopping: new requests are refused; waiting for %d WebSocket answers", state.ws_in_flight)
        if self.loop is None:  # not started yet: stop as uvicorn would
            super().handle_exit(sig, frame)
            return
        self.loop.create_task(self._drain_then_exit(sig))  # signals and drain() run on the loop's thread

    def drain(self) -> None:
        """Stop as on SIGTERM (ServerThread.stop; tests)."""
        self.handle_exit(signal.SIGTERM, None)

    async def _drain_then_exit(self, sig: int) -> None:
        deadline = time.monotonic() + self.rfm_state.config.shutdown_drain_s
        while self.rfm_state.ws_in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.rfm_state.ws_in_flight:
            log.warning("%d WebSocket requests unanswered after %g s of draining", self.rfm_state.ws_in_flight,
                        self.rfm_state.config.shutdown_drain_s)
        super().handle_exit(sig, None)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use (or a bad host) is an OSError at once,
    not a uvicorn error after a minute of loading and exporting."""
    if not 0 <= port <= 65535:
        raise OSError(f"port {port} is out of range (0-65535)")
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows, where SO_REUSEADDR would share a port another server holds
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:  # POSIX: rebind at once after a restart (connections in TIME_WAIT), still refused while one listens
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(runner: Runner | Callable[[], Runner], config: ServerConfig, host: str = "127.0.0.1", port: int = 8000,
          checkpoint: str | Path | None = None, log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Blocking: serve until SIGINT/SIGTERM, then drain in-flight work and exit. `sock`: an already bound socket
    (`bind`), else uvicorn binds host:port."""
    limit_arenas(2)
    # The batcher thread re-takes the GIL between torch ops; a busy event loop would hold it for up to the default
    # 5 ms switch interval each time. 1 ms keeps the model running while requests are being decoded.
    sys.setswitchinterval(0.001)
    config = fit_connections(config)  # a robot's connection is a file: the limit is raised, or the cap lowered
    app = create_app(runner, config, checkpoint)
    if sock is not None:  # uvicorn says where it listens only for sockets it bound itself
        bound_host, bound_port = sock.getsockname()[:2]
        log.info("listening on http://%s:%d (the model loads in the background; GET /readyz says when it is warm)",
                 f"[{bound_host}]" if ":" in bound_host else bound_host, bound_port)
    DrainingServer(uvicorn_config(app, host, port, config, log_level), app.state.rfm).run(
        sockets=[sock] if sock else None)


class ServerThread:
    """A real uvicorn server on 127.0.0.1 in a daemon thread: `with ServerThread(runner, cfg) as s: s.url`."""

    def __init__(self, runner: Runner | Callable[[], Runner], config: ServerConfig | None = None,
                 checkpoint: str | Path | None = None, port: int | None = None, log_level: str = "warning") -> None:
        self.config = config or ServerConfig()
        self.app = create_app(runner, self.config, checkpoint)
        self.port = port or free_port()
        self.server = DrainingServer(uvicorn_config(self.app, "127.0.0.1", self.port, self.config, log_level),
                                     self.app.state.rfm)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign] # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="rfm-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self):
        return self.app.state.rfm

    def start(self, ready_timeout_s: float = 120.0, wait_ready: bool = True) -> ServerThread:
        """Start; wait until it listens and (with wait_ready) until the model is warm or failed to load."""
        self.thread.start()
        t_end = time.monotonic() + ready_timeout_s
        while time.monotonic() < t_end:
            loaded = self.state.service is not None or self.state.load_error is not None
            if self.server.started and (loaded or not wait_ready):
                return self
            if not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} exited during start-up")
            time.sleep(0.02)
        raise TimeoutError(f"server on port {self.port} not ready after {ready_timeout_s} s")

    def stop(self, drain: bool = False) -> None:
        """Stop; with `drain`, as on SIGTERM (new requests refused, WebSocket answers sent first)."""
        if drain and self.server.loop is not None:
            self.server.loop.call_soon_threadsafe(self.server.drain)
        else:
            self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> ServerThread:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
