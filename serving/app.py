"""FastAPI application: HTTP routes, lifespan (load + warm in the background), auth, limits, error handling."""

from __future__ import annotations

import asyncio
import copy
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rfm.runtime import Runner
from rfm.runtime.observation import accepted_sizes
from serving import codec
from serving.config import ServerConfig
from serving.errors import ApiError, PayloadTooLarge, to_api_error
from serving.metrics import Metrics
from serving.openapi import episode_end_request, specialise
from serving.schemas import (
    EPISODE_END_RESPONSES,
    ERROR_RESPONSES,
    ActResponseBody,
    EpisodeEndResponseBody,
    TicksResponseBody,
)
from serving.state import BodyBudget, ServerState, decode_act, peer_address
from serving.ws import WEBSOCKET_PATHS, add_websocket_routes

if sys.version_info >= (3, 11):
    from asyncio import timeout as time_limit  # novermin
else:  # Python 3.10 (Ubuntu 22.04: ROS 2 Humble, JetPack 6): the same context manager, from async-timeout
    from async_timeout import timeout as time_limit

ROUTES = ("/v1/act", "/v1/ticks", "/v1/episodes/end", "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


BODY_S = 60  # a request body must arrive within this long: 8 MB at about 1 Mbit/s; a trickle would hold its task


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None, retry_after_s: int = 1) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all, (408) a body that
    takes over BODY_S seconds to arrive, and (503) one the server-wide `budget` has no room for."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is {declared} bytes, the limit is {limit}")
    chunks, size, taken = [], 0, 0
    try:
        if budget is not None and declared is not None:
            budget.take(int(declared), retry_after_s)
            taken = int(declared)
        async with time_limit(BODY_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
                if budget is not None and size > taken:  # no (or a false) Content-Length: counted as it comes
                    budget.take(size - taken, retry_after_s)
                    taken = size
                chunks.append(chunk)
    except (TimeoutError, asyncio.TimeoutError):  # (one class from Python 3.11 on)
        raise ApiError(408, "request_timeout", f"the body did not arrive within {BODY_S} s "
                       f"({size} bytes of {declared or 'an unknown length'} came)") from None
    except ClientDisconnect:  # the client went away mid-body: its problem, not a server error (no 500, no traceback)
        raise ApiError(499, "client_disconnected", f"the client closed the connection after {size} bytes of the "
                       f"body") from None
    finally:
        if budget is not None:
            budget.used -= taken
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


def _websocket_path(path: str, scope: dict) -> bool:
    """Whether `path` (as the client asked for it, a proxy's prefix included) is one of the WebSocket endpoints."""
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path in WEBSOCKET_PATHS


def raw_body(schema: str) -> dict:
    """openapi_extra for a route that reads its body as bytes (JSON or msgpack): the schema FastAPI cannot infer."""
    ref = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    return {"requestBody": {"required": True, "content": {codec.JSON: ref, codec.MSGPACK: ref}}}


def error_response(err: ApiError, request_id: str | None = None) -> JSONResponse:
    headers = {**(err.headers or {}), "X-Request-ID": request_id} if request_id else err.headers
    return JSONResponse(err.body(request_id), status_code=err.status, headers=headers)


def proxy_request_id(value: str | None) -> str | None:
    """An X-Request-ID header (nginx's $request_id, an ingress's) as the request's id when the body names none;
    one that is not a short printable id is ignored rather than refused: the robot did not send it."""
    return value if codec.is_ident(value) else None


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

    # /docs and /redoc from files in the package, not a CDN: fleet and edge networks are often offline
    app = FastAPIOffline(title="rfm inference server", version="1", lifespan=lifespan,
                  description="Batched robot policy inference: observation in, action chunk out. "
                              "See docs/API.md for msgpack, WebSocket and openpi usage.")
    app.state.rfm = state

    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # an unknown path or method: JSON too
        path = request.url.path
        if exc.status_code == 404 and request.method == "GET" and _websocket_path(path, request.scope):
            return JSONResponse({"error": "upgrade_required", "detail": (
                f"GET {path} is a WebSocket endpoint, and this request asked for no upgrade: a proxy in front of the "
                "server drops the Upgrade and Connection headers (nginx: proxy_http_version 1.1; proxy_set_header "
                "Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; docs/DEPLOYMENT.md)")},
                426, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": f"{request.method} {path}: {exc.detail}"},
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.post("/v1/act", response_model=ActResponseBody, responses=ERROR_RESPONSES,
              openapi_extra=raw_body("ActRequestBody"),
              summary="Predict one action chunk for one observation")
    async def act(request: Request) -> Response:
        t0 = time.perf_counter()
        request_id = proxy_request_id(request.headers.get("x-request-id"))  # a proxy's, so their logs join
        client_id = req = None
        address = peer_address(request.client)
        try:
            client_id = state.authorize(request.headers.get("authorization"), request.client)
            fmt = codec.body_format(request.headers.get("content-type"))
            service = state.require_service()
            body = await read_body(request, state.config.max_body_bytes, state.bodies, state.config.retry_after_s)
            req = await decode_act(service, body, fmt)
            req.request_id = request_id = req.request_id or request_id
            result = await service.act(req, client_id, "/v1/act", t0, address=address)
        except Exception as e:  # noqa: BLE001 - every failure becomes a clean status + message
            err = to_api_error(e, state.config.retry_after_s)
            state.audit_refused("/v1/act", err, t0, client_id, address, request_id, req)
            return error_response(err, request_id)
        out = response_format(request.headers.get("accept"), fmt)
        return Response(codec.dumps(result.to_wire(service, out), out),
                        media_type=codec.MSGPACK if out == "msgpack" else codec.JSON,
                        headers={"X-Request-ID": result.request_id})

    @app.post("/v1/ticks", response_model=TicksResponseBody, responses=ERROR_RESPONSES,
              openapi_extra=raw_body("TicksRequestBody"),
              summary="Record the control ticks a robot executed (servers started with --record): one frame each")
    async def ticks(request: Request):
        try:
            client_id = state.authorize(request.headers.get("authorization"), request.client)
            fmt = codec.body_format(request.headers.get("content-type"))
            service = state.require_service()
            body = await read_body(request, state.config.max_body_bytes, state.bodies, state.config.retry_after_s)
            itf = service.interface
            req = await asyncio.to_thread(
                lambda: codec.parse_ticks(codec.loads(body, fmt), itf.cameras, accepted_sizes(itf),
                                          state.config.resize_images))
            key, n = await service.record_ticks(req, client_id)
            return {"session": key, "ticks": n, "episode_end": req.episode_end}
        except Exception as e:  # noqa: BLE001 - becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))

    @app.post("/v1/episodes/end", response_model=EpisodeEndResponseBody, responses=EPISODE_END_RESPONSES,
              openapi_extra=raw_body("EpisodeEndBody"),
              summary="End a robot session's recorded episode (robot reset), with an optional success label")
    async def end_episode(request: Request):
        try:
            client_id = state.authorize(request.headers.get("authorization"), request.client)
            fmt = codec.body_format(request.headers.get("content-type"))
            service = state.require_service()
            body = await read_body(request, state.config.max_body_bytes, state.bodies, state.config.retry_after_s)
            req = codec.parse_episode_end(codec.loads(body, fmt))
            return {"session": service.end_episode(req, client_id), "recording": True}
        except Exception as e:  # noqa: BLE001 - becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))

    @app.get("/v1/models", summary="The served model: robot interface, identity, server settings")
    async def models(request: Request):
        try:
            state.authorize(request.headers.get("authorization"), request.client)
            return state.require_service().describe()
        except Exception as e:  # noqa: BLE001 - becomes a clean status + message
            return error_response(to_api_error(e, state.config.retry_after_s))

    @app.get("/healthz", summary="Liveness: the process is up")
    async def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - state.started, 1)}

    @app.get("/readyz", summary="Readiness: 503 until the model is loaded and warm")
    async def readyz():
        if state.draining:  # load balancers stop sending here while the answers in flight go out
            return JSONResponse({"status": "draining", "detail": "the server is shutting down"}, status_code=503,
                                headers={"Retry-After": "1"})
        if state.service is None:
            msg = state.load_error or "loading"
            return JSONResponse({"status": "failed" if state.load_error else "loading", "detail": msg},
                                status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready", "model_id": state.service.runner.model_id,
                "model_version": state.service.runner.model_version}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    async def metrics() -> Response:
        if state.service is not None:
            state.metrics.queue_depth.set(state.service.batcher.depth())
            if state.service.recorder is not None:
                state.metrics.observe_recorder(state.service.recorder)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    add_websocket_routes(app, state)
    _register_body_schemas(app, state)
    return app


def _register_body_schemas(app: FastAPI, state: ServerState) -> None:
    """The request bodies the routes read as raw bytes (so FastAPI would not document them): generic while the model
    loads, then specialised to the served model's interface (serving.openapi) and cached."""
    original = app.openapi
    specialised_for: list = [None]  # what the cached document was made from: a first start's engine switch
    # (serving.state) lowers min_deadline_ms, and the document must say what the service enforces

    def openapi() -> dict:
        made_from = (state.service.min_deadline_ms, state.service.runner.prefix_max,
                     state.service.instruction_required()) if state.service else None
        if app.openapi_schema is not None and specialised_for[0] == made_from:
            return app.openapi_schema
        app.openapi_schema = None  # FastAPI's method returns what is cached there: the generic document is wanted
        schema = copy.deepcopy(original())
        app.openapi_schema = None  # FastAPI's method cached its generic document there: ours replaces it
        if state.service is None:
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            comps["EpisodeEndBody"] = episode_end_request()
            comps["ActRequestBody"] = comps["TicksRequestBody"] = {
                "type": "object", "description": "specialised to the served model once it is loaded (see /readyz)"}
            return schema
        app.openapi_schema = specialise(schema, state.service.interface, state.config.max_body_bytes, *made_from)
        specialised_for[0] = made_from
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
