"""FastAPI application: HTTP routes, lifespan (load + warm in the background), auth, limits, error handling."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rfm.runtime import Runner
from serving import codec
from serving.audit import AuditLog
from serving.auth import ApiKeys
from serving.config import ServerConfig
from serving.errors import ApiError, NotReady, PayloadTooLarge, to_api_error
from serving.limits import ActionLimits
from serving.memory import HeapTrimmer
from serving.metrics import Metrics
from serving.openpi import OpenpiMapping
from serving.schemas import ERROR_RESPONSES, ActRequestBody, ActResponseBody, EpisodeEndBody
from serving.service import InferenceService

log = logging.getLogger("rfm.serving")
ROUTES = ("/v1/act", "/v1/episodes/end", "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
JSON_DECODE_IN_THREAD_BYTES = 16 * 1024  # bigger JSON bodies (base64 images) are decoded off the event loop
DECODE_IN_THREAD_BYTES = 1024 * 1024  # msgpack too when this big (nested lists, JPEG/PNG bytes)


class ServerState:
    """Everything one app holds: config, metrics, keys, and the service once the model is warm."""

    def __init__(self, config: ServerConfig, runner: Runner | Callable[[], Runner],
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

    def authorize(self, authorization: str | None) -> str | None:
        """Key id of the caller, None when keys are off; raises AuthError."""
        return self.keys.check(authorization) if self.keys is not None else None

    def require_service(self) -> InferenceService:
        if self.service is None:
            raise NotReady(self.load_error or "the model is loading and warming up")
        return self.service

    def load(self) -> None:
        """Load the runner, warm every batch size, build limits and the batcher; then mark ready."""
        try:
            t = time.perf_counter()
            r = self._runner_or_loader
            runner = r if isinstance(r, Runner) else r()
            if self.config.snap_instructions is not None:
                runner.snap_instructions(self.config.snap_instructions)
            trim = HeapTrimmer(0.0).maybe_trim  # give back what loading and each warm-up batch left behind,
            trim()  # so the resident peak is the model plus one batch, not the sum of transients
            for b in self.config.batch_sizes_to_warm():
                runner.warmup([b])
                trim()
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
                                    use_videos=self.config.record_images == "video")
            self.service = InferenceService(runner, self.config, self.metrics, limits, self.audit, recorder)
            self.metrics.ready.set(1)
            log.info("model %s@%s ready (warm-up %.1f s, batch sizes %s, limits %s)", runner.model_id,
                     runner.model_version, time.perf_counter() - t, self.config.batch_sizes_to_warm(),
                     limits.source if limits else "none")
        except Exception as e:  # reported by /readyz; the process stays up for diagnosis
            log.exception("model failed to load")
            self.load_error = f"model failed to load: {type(e).__name__}: {str(e)[:300]}"

    def close(self) -> None:
        if self.service is not None:
            self.service.close()
        if self.audit is not None:
            self.audit.close()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is {declared} bytes, the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): count HTTP requests by route and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            self.metrics.observe_request(path if path in ROUTES else "other", status[0], time.perf_counter() - t0)


def response_format(accept: str | None, default: str) -> str:
    a = (accept or "").lower()
    if any(t in a for t in codec.MSGPACK_TYPES):
        return "msgpack"
    if codec.JSON in a:
        return "json"
    return default


def error_response(err: ApiError, request_id: str | None = None) -> JSONResponse:
    return JSONResponse(err.body(request_id), status_code=err.status, headers=err.headers)


async def decode_act(service: InferenceService, body: bytes, fmt: str) -> codec.ActRequest:
    """Body bytes -> ActRequest; large bodies are decoded in a worker thread, raw msgpack pixels inline."""
    itf = service.interface

    def decode() -> codec.ActRequest:
        return codec.parse_act(codec.loads(body, fmt), itf.cameras, itf.image_size)

    if len(body) > (JSON_DECODE_IN_THREAD_BYTES if fmt == "json" else DECODE_IN_THREAD_BYTES):
        return await asyncio.to_thread(decode)
    return decode()


def create_app(runner: Runner | Callable[[], Runner], config: ServerConfig | None = None,
               checkpoint: str | Path | None = None) -> FastAPI:
    """The server app. `runner`: a Runner, or a callable that loads one (run in a background thread at start-up).

    `checkpoint` (optional) is where stats.json action limits are read from.
    """
    state = ServerState(config or ServerConfig(), runner, checkpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=state.load, name="rfm-load", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        await asyncio.to_thread(state.close)

    app = FastAPI(title="rfm inference server", version="1", lifespan=lifespan,
                  description="Batched robot policy inference: observation in, action chunk out. "
                              "See docs/API.md for msgpack, WebSocket and openpi usage.")
    app.state.rfm = state

    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.post("/v1/act", response_model=ActResponseBody, responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/ActRequestBody"}},
                  "application/msgpack": {"schema": {"$ref": "#/components/schemas/ActRequestBody"}}}}},
              summary="Predict one action chunk for one observation")
    async def act(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            client_id = state.authorize(request.headers.get("authorization"))
            fmt = codec.body_format(request.headers.get("content-type"))
            service = state.require_service()
            body = await read_body(request, state.config.max_body_bytes)
            req = await decode_act(service, body, fmt)
            result = await service.act(req, client_id, "/v1/act", t0)
        except Exception as e:  # noqa: BLE001 - every failure becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))
        out = response_format(request.headers.get("accept"), fmt)
        return Response(codec.dumps(result.to_wire(service, out), out),
                        media_type=codec.MSGPACK if out == "msgpack" else codec.JSON,
                        headers={"X-Request-ID": result.request_id})

    @app.post("/v1/episodes/end", responses=ERROR_RESPONSES,
              summary="End a robot session's recorded episode (robot reset), with an optional success label")
    async def end_episode(request: Request, body: EpisodeEndBody):
        try:
            client_id = state.authorize(request.headers.get("authorization"))
            service = state.require_service()
            if service.recorder is None:
                raise ApiError(409, "not_recording", "this server was started without --record")
            key = body.session_id or body.robot_id or client_id or "default"
            service.recorder.end_episode(key, success=body.success)
            return {"session": key, "recording": True}
        except Exception as e:  # noqa: BLE001 - becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))

    @app.get("/v1/models", summary="The served model: robot interface, identity, server settings")
    async def models(request: Request):
        try:
            state.authorize(request.headers.get("authorization"))
            return state.require_service().describe()
        except Exception as e:  # noqa: BLE001 - becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))

    @app.get("/healthz", summary="Liveness: the process is up")
    async def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 1)}

    @app.get("/readyz", summary="Readiness: 503 until the model is loaded and warm")
    async def readyz():
        if state.service is None:
            msg = state.load_error or "loading"
            return JSONResponse({"status": "failed" if state.load_error else "loading", "detail": msg},
                                status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready", "model_id": state.service.runner.model_id,
                "model_version": state.service.runner.model_version}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        if state.service is not None:
            state.metrics.queue_depth.set(state.service.batcher.depth())
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    from serving.ws import add_websocket_routes

    add_websocket_routes(app, state)
    app.openapi_schema = None
    _register_body_schema(app)
    return app


def _register_body_schema(app: FastAPI) -> None:
    """Put ActRequestBody into components/schemas (the route reads raw bytes, so FastAPI would not)."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            body = ActRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body.pop("$defs", {}).items():
                comps.setdefault(name, sub)
            comps["ActRequestBody"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
