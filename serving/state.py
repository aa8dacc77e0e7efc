"""What one server app holds (ServerState) and how a request body becomes an ActRequest (decode_act): shared by
the HTTP routes (serving.app) and the WebSocket transports (serving.ws)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfm.runtime import Runner
from rfm.runtime.base import StagedRunner
from rfm.runtime.limits import ActionLimits
from rfm.runtime.observation import accepted_sizes
from serving import codec
from serving.audit import AuditLog
from serving.auth import ApiKeys, AuthError
from serving.batcher import ShuttingDown
from serving.config import ServerConfig
from serving.errors import ApiError, NotReady
from serving.memory import HeapTrimmer
from serving.metrics import Metrics
from serving.openpi import OpenpiMapping
from serving.service import InferenceService

log = logging.getLogger("rfm.serving")
JSON_DECODE_IN_THREAD_BYTES = 16 * 1024  # bigger JSON bodies (base64 images) are decoded off the event loop
DECODE_IN_THREAD_BYTES = 1024 * 1024  # msgpack too when this big (nested lists, JPEG/PNG bytes)



def peer_address(client: Any) -> str | None:
    """A connection's sender as uvicorn saw it (a trusted proxy's X-Forwarded-For applied), for logs and audit."""
    return getattr(client, "host", None)

class BodyBudget:
    """Bytes of request bodies being read at once, server-wide. Each body is bounded by --max-body-mb, but HTTP
    connections are not capped (robots and probes must get through), so 64 slow 8 MB uploads held 1 GB; past the
    budget a body is refused (503 + Retry-After) instead of read."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int, retry_after_s: int) -> None:
        if self.used + n > self.limit:
            raise ApiError(503, "overloaded", f"the server is reading {self.used >> 20} MB of request bodies, its "
                           f"limit; send it again shortly", {"Retry-After": str(retry_after_s)})
        self.used += n


class ServerState:
    """Everything one app holds: config, metrics, keys, and the service once the model is warm."""

    def __init__(self, config: ServerConfig, runner: Runner | StagedRunner | Callable[[], Runner | StagedRunner],
                 checkpoint: str | Path | None = None) -> None:
        self.config, self.checkpoint = config, checkpoint
        self._runner_or_loader = runner
        self.metrics = Metrics()
        self.keys = ApiKeys.from_file(config.api_keys_file) if config.api_keys_file else None
        self.audit = AuditLog(config.audit_log) if config.audit_log else None
        self.service: InferenceService | None = None
        self.openpi: OpenpiMapping | None = None
        self.load_error: str | None = None
        self.started = time.time()
        self.websockets = 0  # open WebSockets: new ones are refused (503) at config.max_connections
        self.ws_in_flight = 0  # WebSocket requests taken and not yet answered: a graceful stop waits for them
        self.bodies = BodyBudget(max(256 << 20, 8 * self.config.max_body_bytes))  # request bodies read at once
        self.draining = False  # SIGTERM: new requests are refused (503) while those taken are answered
        self.auth_failures = 0  # requests refused for a missing or wrong key

    def authorize(self, authorization: str | None, peer: Any = None) -> str | None:
        """Key id of the caller, None when keys are off; raises AuthError, logged with the caller's address (the
        first refusal, then every 100th: a scan must not flood the log), since the audit log leaves out requests
        without a valid key."""
        if self.keys is None:
            return None
        try:
            return self.keys.check(authorization)
        except AuthError as e:
            self.auth_failures += 1
            if self.auth_failures == 1 or self.auth_failures % 100 == 0:
                host = peer_address(peer) or "unknown address"
                log.warning("refused a request from %s: %s (%d refused so far)", host, e, self.auth_failures)
            raise

    def audit_refused(self, endpoint: str, err: ApiError, t0: float, client_id: str | None = None,
                      address: str | None = None, request_id: str | None = None, req: Any = None,
                      session_id: str | None = None) -> None:
        """One audit line for an action request (or WebSocket) refused with `err`, beside the answered ones, so the
        log says why a robot got no actions when. Not for a missing or wrong key: a sender without one must not grow
        the audit log (those are in the server log, rate-limited)."""
        if self.audit is None or err.status == 401:
            return
        runner = self.service.runner if self.service is not None else None
        self.audit.write({"request_id": request_id or getattr(req, "request_id", None), "endpoint": endpoint,
                          "status": err.status, "error": err.code, "detail": err.message[:300],
                          "model_id": getattr(runner, "model_id", None),
                          "model_version": getattr(runner, "model_version", None), "client_id": client_id,
                          "address": address, "robot_id": getattr(req, "robot_id", None),
                          "session_id": getattr(req, "session_id", None) or session_id,
                          "timings": {"total_ms": round(1000 * (time.perf_counter() - t0), 3)}})

    @property
    def loading(self) -> bool:
        """The model is still loading and warming up (not failed, the server not stopping)."""
        return self.service is None and self.load_error is None and not self.draining

    def require_service(self) -> InferenceService:
        if self.draining:
            raise ShuttingDown("the server is shutting down; send the request to another replica or again later")
        if self.service is None:
            raise NotReady(self.load_error or "the model is loading and warming up")
        return self.service

    def load(self) -> None:
        """Load the runner, warm every batch size, build limits and the batcher; then mark ready."""
        try:
            t = time.perf_counter()
            r = self._runner_or_loader
            loaded = r if isinstance(r, (Runner, StagedRunner)) else r()
            staged = loaded if isinstance(loaded, StagedRunner) else None
            runner = staged.first if staged else loaded
            costs = self._warm(runner)
            names = runner.interface.action_names
            if self.config.action_limits:
                limits = ActionLimits.from_file(self.config.action_limits, names)
            elif self.checkpoint is not None:
                limits = ActionLimits.from_stats(self.checkpoint, names, self.config.action_limit_margin)
            else:
                limits = None
            self.openpi = (OpenpiMapping.from_file(self.config.openpi_mapping, runner.interface.cameras)
                           if self.config.openpi_mapping else OpenpiMapping.default(runner.interface.cameras))
            recorder = None
            if self.config.record_dir:
                from rfm.runtime.recorder import Recorder

                recorder = Recorder(self.config.record_dir, runner.interface,
                                    idle_timeout_s=self.config.record_idle_timeout_s,
                                    max_buffer_mb=self.config.record_memory_mb,
                                    use_videos=self.config.record_images == "video",
                                    vcodec=self.config.record_vcodec,
                                    model=runner.recorded_name)
            service = InferenceService(runner, self.config, self.metrics, limits, self.audit, recorder)
            service.engine_next = staged.engine if staged else None  # said from the first answer on
            service.calibrate(costs)
            self.service = service
            self.metrics.serving(runner.model_id, runner.model_version, runner.runs_on)
            self.metrics.ready.set(1)
            log.info("model %s@%s ready on %s%s (warm-up %.1f s, batch sizes %s, limits %s)", runner.model_id,
                     runner.model_version, runner.runs_on,
                     f" from {runner.engine_dir}" if runner.engine_dir else "", time.perf_counter() - t,
                     self.config.batch_sizes_to_warm(), limits.source if limits else "none")
            if staged:
                log.info("serving on %s until %s is ready", runner.runs_on, staged.what)
                threading.Thread(target=self._switch, args=(staged,), name="rfm-engine-switch", daemon=True).start()
        except Exception as e:  # reported by /readyz; the process stays up for diagnosis
            if isinstance(e, (ValueError, FileNotFoundError)):  # says what is wrong (an EngineError too): no traceback
                log.error("model failed to load: %s", e)
            else:
                log.exception("model failed to load")
            self.load_error = f"model failed to load: {type(e).__name__}: {str(e)[:300]}"

    def _warm(self, runner: Runner) -> dict[int, float]:
        """Warm every configured batch size; seconds per batch size (the second call of each; for batch 1 the fastest
        of three, since a stall there would make every batch look worth it to --batching auto, and they cost
        little), the admission model's first estimate."""
        runner.default_instruction = self.config.default_instruction
        if self.config.snap_instructions is not None:
            runner.snap_instructions(self.config.snap_instructions)
        trim = HeapTrimmer(0.0).maybe_trim  # give back what loading and each warm-up batch left behind,
        trim()  # so the resident peak is the model plus one batch, not the sum of transients
        costs = {}
        for b in self.config.batch_sizes_to_warm():
            runner.warmup([b])  # the first call of a shape pays one-time costs: time the next
            timed = []
            for _ in range(3 if b == 1 else 1):
                tb = time.perf_counter()
                runner.warmup([b])
                timed.append(time.perf_counter() - tb)
            costs[b] = min(timed)
            trim()
        return costs

    def _switch(self, staged: StagedRunner) -> None:
        """Build and warm the staged runner beside the serving one, then serve on it; on failure keep serving on the
        first (the reason logged). Not niced: a thread's nice value passes to the inference threads it starts (ONNX
        Runtime's pool), and an unprivileged process cannot lower it again."""
        try:
            t = time.perf_counter()
            runner = staged.then()
            costs = self._warm(runner)
            self.service.switch_runner(runner, costs)
            self.metrics.serving(runner.model_id, runner.model_version, runner.runs_on)
            log.info("now serving on %s (built and warmed in %.1f s beside the serving engine)",
                     runner.runs_on, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - the server keeps serving on the first runner
            self.service.engine_next = None
            log.warning("staying on %s: %s", staged.first.runs_on,
                        f"{type(e).__name__}: {str(e)[:300]}")

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
        if self.audit is not None:
            self.audit.close()


async def decode_act(service: InferenceService, body: bytes, fmt: str) -> codec.ActRequest:
    """Body bytes -> ActRequest; large bodies are decoded in a worker thread, raw msgpack pixels inline."""
    itf = service.interface

    def decode() -> codec.ActRequest:
        return codec.parse_act(codec.loads(body, fmt), itf.cameras, accepted_sizes(itf),
                               any_size=service.config.resize_images)

    if len(body) > (JSON_DECODE_IN_THREAD_BYTES if fmt == "json" else DECODE_IN_THREAD_BYTES):
        return await asyncio.to_thread(decode)
    return decode()
