"""WebSocket transports: /v1/ws (rfm payloads, JSON text or msgpack binary frames) and /openpi (openpi protocol)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from rfm.runtime.observation import accepted_sizes
from serving import codec, openpi
from serving.codec import ActRequest
from serving.errors import ApiError, PayloadTooLarge, to_api_error
from serving.state import ServerState, decode_act, peer_address

POLICY_VIOLATION, MESSAGE_TOO_BIG, INTERNAL_ERROR, TRY_AGAIN_LATER = 1008, 1009, 1011, 1013
# "/" too for openpi: its own examples connect with WebsocketClientPolicy(host, port), which asks for the root path
OPENPI_PATHS = ("/openpi", "/")
WEBSOCKET_PATHS = ("/v1/ws", *OPENPI_PATHS)  # a plain GET of one is a proxy that dropped the upgrade (serving.app)
WS_PIPELINE = 8  # requests of one /v1/ws socket in flight at once; beyond, the server stops reading it


async def _admit(ws: WebSocket, state: ServerState, endpoint: str, loading_ok: bool = False) -> str | None | bool:
    """Check key and readiness before accepting; on failure refuse the handshake and return False. The client sees
    the HTTP status (401, or 503 with Retry-After while the model loads) and the JSON error body, as over HTTP, where
    the ASGI server can send one (uvicorn can); else a bare 403. `loading_ok`: a model still loading is no reason
    to refuse (the caller waits for it)."""
    client_id = None
    try:
        client_id = state.authorize(ws.headers.get("authorization"), ws.client)
        if not (loading_ok and state.loading):
            state.require_service()
        if state.websockets >= state.config.max_connections:  # --max-connections caps WebSockets (HTTP: queue)
            raise ApiError(503, "overloaded", f"{state.websockets} WebSockets are open, this server's limit "
                           f"(--max-connections); try again later or another replica",
                           {"Retry-After": str(state.config.retry_after_s)})
    except Exception as e:  # noqa: BLE001 - becomes a clean status + message
        err = to_api_error(e, state.config.retry_after_s)
        state.metrics.observe_request(endpoint, err.status, 0.0)
        state.audit_refused(endpoint, err, time.perf_counter(), client_id, peer_address(ws.client))
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(err.body(), err.status, err.headers))
        else:
            await ws.close(code=POLICY_VIOLATION if err.status == 401 else TRY_AGAIN_LATER, reason=err.message[:120])
        return False
    return client_id


def _frame(message: dict) -> tuple[bytes | None, str]:
    """(payload, 'msgpack' | 'json') of a received frame."""
    if message.get("bytes") is not None:
        return message["bytes"], "msgpack"
    return (message.get("text") or "").encode(), "json"


def add_websocket_routes(app: FastAPI, state: ServerState) -> None:
    limit = state.config.max_ws_message_bytes

    @app.websocket("/v1/ws")
    async def ws_act(ws: WebSocket) -> None:
        """One request per frame, answered in order in the same frame type; errors do not close the socket.

        Frames are read as they arrive and run concurrently (up to WS_PIPELINE per socket), so a robot that sends
        its next observation before the last answer came back gets both in the next batch rather than queued
        behind each other on its socket; the answers still go out in the order the frames came in.
        """
        client_id = await _admit(ws, state, "/v1/ws")
        if client_id is False:
            return
        await ws.accept()
        gauge = state.metrics.ws_connections.labels("/v1/ws")
        gauge.inc()
        state.websockets += 1
        connection = f"ws-{uuid.uuid4().hex[:12]}"  # the recorded episode of frames that name no session or robot
        address = peer_address(ws.client)
        anonymous = False  # whether any did: that episode ends with the connection

        async def answer(body: bytes, fmt: str, t0: float) -> tuple[bytes | str, int]:
            nonlocal anonymous
            req = None
            try:
                if len(body) > limit:
                    raise PayloadTooLarge(f"message is {len(body)} bytes, the limit is {limit}")
                service = state.require_service()
                req = await decode_act(service, body, fmt)
                anonymous = anonymous or not (req.session_id or req.robot_id)
                result = await service.act(req, client_id, "/v1/ws", t0, connection, address)
                out, status = result.to_wire(service, fmt), 200
            except Exception as e:  # noqa: BLE001 - reported in-band, the connection stays open
                err = to_api_error(e, state.config.retry_after_s)
                out, status = {**err.body(), "status": err.status}, err.status
                state.audit_refused("/v1/ws", err, t0, client_id, address, req=req)
            state.metrics.observe_request("/v1/ws", status, time.perf_counter() - t0)
            return (codec.dumps(out, "msgpack") if fmt == "msgpack" else codec.dumps(out, "json").decode()), status

        in_flight: asyncio.Queue = asyncio.Queue(WS_PIPELINE)  # answers in arrival order; full: stop reading

        async def reply() -> None:
            """Send answers in order; once the socket is gone, keep draining so the reader never blocks on put."""
            closed = False
            while True:
                task = await in_flight.get()
                if task is None:
                    return
                try:
                    data, status = await task
                    if closed:
                        continue
                    await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_text(data))
                    if status == 413:
                        closed = True
                        await ws.close(code=MESSAGE_TOO_BIG)
                except (WebSocketDisconnect, RuntimeError, OSError):  # the client went away mid-answer
                    closed = True
                finally:
                    state.ws_in_flight -= 1

        replier = asyncio.create_task(reply())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                body, fmt = _frame(message)
                state.ws_in_flight += 1  # until its answer is sent: a graceful stop waits for it
                await in_flight.put(asyncio.create_task(answer(body, fmt, time.perf_counter())))
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: received after the replier closed the socket
            pass
        finally:
            await in_flight.put(None)  # the replier drains what is in flight, then stops
            await replier
            gauge.dec()
            state.websockets -= 1
            service = state.service
            if anonymous and service is not None and service.recorder is not None:
                service.recorder.end_episode(connection, reason="shutdown" if state.draining else "disconnect")

    async def ws_openpi(ws: WebSocket) -> None:
        """openpi WebsocketPolicyServer protocol: metadata on connect, then msgpack-numpy obs -> actions."""
        # an openpi robot started before the server connects while the model loads: openpi's client waits for the
        # server by retrying only a refused connection, so a 503 at the handshake crashed it. The socket is taken
        # and the metadata frame, which the client waits for, is sent once the model is ready.
        client_id = await _admit(ws, state, "/openpi", loading_ok=True)
        if client_id is False:
            return
        await ws.accept()
        gauge = state.metrics.ws_connections.labels("/openpi")
        gauge.inc()
        state.websockets += 1
        session = f"openpi-{uuid.uuid4().hex[:12]}"  # one recorded episode per connection
        address = peer_address(ws.client)
        service = None
        try:
            while state.loading:
                await asyncio.sleep(0.05)
            try:
                service = state.require_service()
            except Exception as e:  # noqa: BLE001 - the model failed to load, or the server is stopping
                err = to_api_error(e, state.config.retry_after_s)
                await ws.send_text(f"{err.status} {err.code}: {err.message}")
                await ws.close(code=TRY_AGAIN_LATER if err.status == 503 and state.draining else INTERNAL_ERROR,
                               reason=err.code)
                return
            await ws.send_bytes(openpi.pack(service.describe()))
            itf = service.interface
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                t0 = time.perf_counter()
                state.ws_in_flight += 1  # until its answer is sent: a graceful stop waits for it
                try:
                    service = state.require_service()  # refused while the server drains
                    body, fmt = _frame(message)
                    if fmt != "msgpack":
                        raise ApiError(422, "invalid_payload", "openpi frames must be binary msgpack, got text")
                    if len(body) > limit:
                        raise PayloadTooLarge(f"message is {len(body)} bytes, the limit is {limit}")
                    obs = state.openpi.to_observation(openpi.unpack(body), itf.cameras, accepted_sizes(itf),
                                                      state.config.resize_images)
                    result = await service.act(ActRequest(obs, session_id=session), client_id, "/openpi", t0,
                                               address=address)
                except Exception as e:  # noqa: BLE001 - openpi convention: text frame, then close 1011
                    err = to_api_error(e, state.config.retry_after_s)
                    state.metrics.observe_request("/openpi", err.status, time.perf_counter() - t0)
                    state.audit_refused("/openpi", err, t0, client_id, address, session_id=session)
                    try:
                        await ws.send_text(f"{err.status} {err.code}: {err.message}")
                        await ws.close(code=INTERNAL_ERROR, reason=err.code)
                    finally:
                        state.ws_in_flight -= 1
                    break
                timing = {"infer_ms": result.timings["inference_ms"], **result.timings,
                          "batch_size": result.batch_size}
                reply = {"actions": result.actions, "server_timing": timing,
                         "policy_timing": {"infer_ms": result.timings["inference_ms"]}}  # as openpi's servers send
                if result.clipped_dims:
                    reply["clipped_dims"] = result.clipped_dims
                try:
                    await ws.send_bytes(openpi.pack(reply))
                finally:
                    state.ws_in_flight -= 1
                state.metrics.observe_request("/openpi", 200, time.perf_counter() - t0)
        except WebSocketDisconnect:
            pass
        finally:
            gauge.dec()
            state.websockets -= 1
            if service is not None and service.recorder is not None:  # closed by the server's stop, or the robot
                service.recorder.end_episode(session, reason="shutdown" if state.draining else "disconnect")

    for path in OPENPI_PATHS:
        app.add_api_websocket_route(path, ws_openpi)
