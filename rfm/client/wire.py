"""The client side of the wire format (see docs/API.md): observations to request bodies, responses to numpy."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

MSGPACK = "application/msgpack"
JSON = "application/json"
# a server restarting, draining or overloaded, or a proxy in front of it answering for it meanwhile (its 502 where
# a direct connection would be refused): asking again may be answered
RETRY_STATUS = (429, 502, 503, 504)
LABEL_FIELDS = ("episode_end", "success", "correction", "record")
OPTIONAL_FIELDS = ("request_id", "robot_id", "session_id")
COMMITTED = "committed_actions"  # rfm.constants.COMMITTED (not imported: the SDK stays free of the runtime)


def check_structure(obs: Any, where: str = "") -> None:
    """What the SDK can check without the model: a dict with an "images" dict, a "state" and a string instruction.
    ValueError naming the field, before anything is sent (the server checks the rest against the model)."""
    problem = None
    if not isinstance(obs, Mapping):
        problem = f"observation must be a dict with 'images', 'state' and 'instruction', got {type(obs).__name__}"
    elif not isinstance(obs.get("images"), Mapping):
        got = "nothing" if obs.get("images") is None else type(obs["images"]).__name__
        problem = f"'images' must be a dict of camera name -> (H, W, 3) uint8 frame, got {got}"
    elif obs.get("state") is None:
        problem = "'state' is missing: the robot's state, one number per state name"
    elif not isinstance(obs.get("instruction") or "", str):
        problem = f"'instruction' must be a string, got {type(obs['instruction']).__name__}"
    if problem:
        raise ValueError(where + problem)


def _image(img: Any, fmt: str, cam: str = "") -> Any:
    """(H, W, 3) uint8 array -> raw {data, shape, dtype}; bytes/str (already encoded JPEG/PNG) pass through."""
    if isinstance(img, (bytes, str)):
        return base64.b64encode(img).decode() if (fmt == "json" and isinstance(img, bytes)) else img
    arr = np.ascontiguousarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"image {cam!r} has dtype {arr.dtype}, expected uint8 (H, W, 3)")
    data = arr.tobytes()
    return {"data": base64.b64encode(data).decode() if fmt == "json" else data, "shape": list(arr.shape),
            "dtype": "uint8"}


def encode_observation(obs: Mapping[str, Any], fmt: str = "msgpack", deadline_ms: float | None = None,
                       **ids: str | None) -> bytes:
    """{"images": {cam: (H, W, 3) uint8}, "state": (D_s,), "instruction": str} -> request body bytes.

    An observation's "committed_actions" (P, D_a) (the actions the robot executes before the answer can be used;
    models with prefix_max > 0) are sent as P lists of numbers; the chunk returned starts with them.
    `deadline_ms`: the server answers within it or refuses at once (503 + Retry-After)."""
    check_structure(obs)
    body: dict[str, Any] = {
        "images": {str(cam): _image(img, fmt, str(cam)) for cam, img in obs["images"].items()},
        "state": _floats(obs["state"], "state"),
        "instruction": obs.get("instruction") or "",
    }
    committed = obs.get(COMMITTED)
    if committed is not None:
        rows = np.asarray(committed, np.float64)
        if rows.size:  # one action (D_a,) or P of them (P, D_a)
            body[COMMITTED] = (rows[None] if rows.ndim == 1 else rows).tolist()
    for key in OPTIONAL_FIELDS:
        value = ids.get(key) or obs.get(key)
        if value:
            body[key] = value
    if deadline_ms is not None:
        body["deadline_ms"] = float(deadline_ms)
    for key in LABEL_FIELDS:  # recording labels (servers started with --record)
        value = obs.get(key)
        if value is not None:
            body[key] = _floats(value, key) if key == "correction" else bool(value)
    return _pack(body, fmt)


def _pack(body: dict, fmt: str) -> bytes:
    if fmt == "msgpack":
        return msgpack.packb(body, use_bin_type=True)
    return json.dumps(body, allow_nan=True).encode()


def _floats(value: Any, what: str) -> list[float]:
    try:
        return np.asarray(value, np.float64).reshape(-1).tolist()
    except (TypeError, ValueError):
        raise ValueError(f"{what!r} must be numbers, got {str(value)[:60]!r}") from None


def encode_ticks(ticks: list[Mapping[str, Any]], session_id: str, fmt: str = "msgpack", robot_id: str | None = None,
                 episode_end: bool = False, success: bool | None = None, stream: str | None = None,
                 episode: int | None = None) -> bytes:
    """Control ticks a robot executed -> a POST /v1/ticks body. Each tick: its observation ("images", "state",
    "instruction"), the "action" executed, optionally the "chunk" it came from, a "label" (a correction to
    learn from instead), its "index" in the episode and its "time" (seconds, the robot's clock); `stream` and
    `episode` say whose episode (retries of a batch the server already has are then recorded once)."""
    out = []
    for i, t in enumerate(ticks):
        check_structure(t, f"ticks[{i}]: ")
        if t.get("action") is None:
            raise ValueError(f"ticks[{i}]: 'action' is missing: the action the robot executed at that tick")
        item: dict[str, Any] = {"images": {str(c): _image(img, fmt, str(c)) for c, img in t["images"].items()},
                                "state": _floats(t["state"], "state"), "instruction": t.get("instruction") or "",
                                "action": _floats(t["action"], "action")}
        for key in ("chunk", "label"):
            if t.get(key) is not None:
                item[key] = _floats(t[key], key)
        if t.get("index") is not None:
            item["index"] = int(t["index"])
        if t.get("time") is not None:
            item["time"] = float(t["time"])
        out.append(item)
    body: dict[str, Any] = {"session_id": session_id, "ticks": out, "episode_end": bool(episode_end)}
    if robot_id:
        body["robot_id"] = robot_id
    if stream is not None:
        body["stream"], body["episode"] = stream, int(episode or 0)
    if success is not None:
        body["success"] = bool(success)
    return _pack(body, fmt)


def decode_response(content: bytes, content_type: str | None) -> dict:
    """Response body -> dict with "actions" as a (H, D_a) float32 array."""
    if (content_type or "").startswith(MSGPACK):
        out = msgpack.unpackb(content, raw=False)
    else:
        out = json.loads(content)
    a = out.get("actions") if isinstance(out, dict) else None
    if isinstance(a, dict):
        out["actions"] = np.frombuffer(a["data"], dtype=np.dtype(a.get("dtype", "float32"))).reshape(a["shape"])
    elif a is not None:
        out["actions"] = np.asarray(a, dtype=np.float32)
    return out
