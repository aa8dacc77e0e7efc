"""The served OpenAPI document, specialised to the served model: its cameras, image sizes, state and action lengths.

A client generated from /openapi.json is then right for that robot, and every request the schema calls valid is one
the server accepts (and the other way round), which schemathesis checks with every check on. Images are described
in their canonical form, a raw uint8 array ({data: base64, shape: [H, W, 3], dtype: uint8}) at a size the camera may
send; the server also accepts JPEG/PNG and nested lists (docs/API.md), which a schema cannot pin to a size.
"""

from __future__ import annotations

from rfm.config import RobotInterface
from rfm.runtime.observation import MAX_ABS_VALUE, accepted_sizes
from serving.codec import IMAGE_DTYPES, MAX_DEADLINE_MS, MAX_ID_LEN, MAX_TICKS

ID_PATTERN = r"^[ -~]+$"  # printable ASCII, as serving.codec checks


def _numbers(n: int, what: str) -> dict:
    return {"type": "array", "minItems": n, "maxItems": n, "description": f"{n} numbers: {what}",
            "items": {"type": "number", "minimum": -MAX_ABS_VALUE, "maximum": MAX_ABS_VALUE}}


def _raw_image(h: int, w: int) -> dict:
    chars = 4 * h * w  # base64 of h*w*3 bytes: no padding, since the byte count divides by 3
    return {"type": "object", "required": ["data", "shape"], "title": f"RawImage{h}x{w}",
            "properties": {"data": {"type": "string", "pattern": f"^[A-Za-z0-9+/]{{{chars}}}$",
                                    "description": f"base64 of the {h * w * 3} bytes of an {h}x{w}x3 uint8 array "
                                                   f"(msgpack: the bytes themselves)"},
                           "shape": {"const": [h, w, 3]}, "dtype": {"enum": list(IMAGE_DTYPES)}}}


def _images(itf: RobotInterface) -> dict:
    sizes = accepted_sizes(itf)
    props = {}
    for cam in itf.cameras:
        variants = [_raw_image(h, w) for h, w in sizes[cam]]
        props[cam] = variants[0] if len(variants) == 1 else {"oneOf": variants}
        props[cam]["description"] = (f"camera {cam!r}: " + " or ".join(f"{h}x{w}" for h, w in sizes[cam])
                                     + " (H x W); also base64 JPEG/PNG or a nested list (docs/API.md)")
    return {"type": "object", "properties": props, "required": list(itf.cameras), "additionalProperties": False,
            "description": "one frame per camera of the served model"}


def _ident(description: str) -> dict:
    return {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": ID_PATTERN},
                      {"type": "null"}], "description": description}


def _observation(itf: RobotInterface, instruction_required: bool = False) -> dict:
    """images, state, instruction; `instruction_required`: the model cannot run without one (several trained
    instructions and no --default-instruction), so an empty one is not a valid request."""
    text = ({"type": "string", "maxLength": 4096, "pattern": r"\S", "description": "language instruction: the task"}
            if instruction_required else
            {"type": "string", "maxLength": 4096, "default": "",
             "description": "language instruction; empty or absent: the server's default instruction"})
    return {"images": _images(itf), "state": _numbers(itf.state_dim, ", ".join(itf.state_names)), "instruction": text}


def _required(instruction_required: bool, *fields: str) -> list[str]:
    return [*fields, "instruction"] if instruction_required else list(fields)


def _committed(itf: RobotInterface, prefix_max: int) -> dict:
    """committed_actions: at most prefix_max actions of D_a numbers; a model with prefix_max 0 takes none."""
    act = itf.action_dim
    what = ("the actions the robot executes from this observation's tick until the answer can be used (delay-aware "
            "continuation): the returned chunk starts with them and continues them. ")
    limit = (f"At most {prefix_max} (the model's prefix_max)." if prefix_max else
             "This model's prefix_max is 0 (not trained for delay-aware continuation): any committed action is "
             "rejected with 422; leave the field out.")
    rows = {"type": "array", "maxItems": prefix_max, "items": _numbers(act, ", ".join(itf.action_names))}
    return {"anyOf": [rows, {"type": "null"}], "description": what + limit}


def act_request(itf: RobotInterface, min_deadline_ms: float, prefix_max: int = 0,
                instruction_required: bool = False) -> dict:
    """POST /v1/act and /v1/ws body; `prefix_max`: the served model's (committed_actions)."""
    act = itf.action_dim
    props = {**_observation(itf, instruction_required), "committed_actions": _committed(itf, prefix_max),
             "request_id": _ident("echoed back; generated when absent"),
             "robot_id": _ident("for the audit log and the recorder"),
             "session_id": _ident("for the audit log and the recorder (one episode per session and robot)"),
             "episode_end": {"type": "boolean", "default": False,
                             "description": "recorder: this step ends the robot's current episode"},
             "success": {"type": ["boolean", "null"], "description": "recorder: outcome label (task succeeded)"},
             "correction": {"anyOf": [_numbers(act, "recorder: operator/expert action recorded instead of the "
                                                    "model's, DAgger-style"), {"type": "null"}]},
             "record": {"type": "boolean", "default": True, "description": "recorder: false when the robot reports "
                                                                          "its executed ticks on POST /v1/ticks"},
             "deadline_ms": {"anyOf": [{"type": "number", "minimum": min_deadline_ms, "maximum": MAX_DEADLINE_MS},
                                       {"type": "null"}],
                             "description": "answer within this many ms of arrival (capped by the server's "
                                            "--timeout-ms; at least min_deadline_ms, about 3 inferences); a request "
                                            "the server cannot answer in time is refused at once with 503"}}
    return {"type": "object", "title": "ActRequestBody", "required": _required(instruction_required, "images", "state"),
            "properties": props, "additionalProperties": False,
            "description": "one observation of one robot"}


def ticks_request(itf: RobotInterface, max_body_bytes: int, instruction_required: bool = False) -> dict:
    """POST /v1/ticks body; at most as many ticks as fit in the body limit (base64 images in JSON)."""
    act, h = itf.action_dim, itf.chunk_size
    per_tick = sum(4 * a * b for a, b in (accepted_sizes(itf)[c][0] for c in itf.cameras))
    max_ticks = max(1, min(MAX_TICKS, max_body_bytes // (per_tick + 4096)))
    tick = {"type": "object", "required": _required(instruction_required, "images", "state", "action"),
            "additionalProperties": False,
            "properties": {**_observation(itf, instruction_required), "action": _numbers(act, "the action executed at this tick"),
                           "chunk": {"anyOf": [_numbers(h * act, "the predicted chunk the action came from, "
                                                                 "flattened (H x D_a)"), {"type": "null"}]},
                           "label": {"anyOf": [_numbers(act, "the action to learn from instead (operator or "
                                                             "expert)"), {"type": "null"}]},
                           "index": _count("the tick's number in its episode, counted by the robot from 0: a jump "
                                           "ends the recorded episode (nothing is recorded with a hole)"),
                           "time": {"anyOf": [{"type": "number"}, {"type": "null"}],
                                    "description": "seconds on the robot's clock (any origin, never going back) "
                                                   "when it executed the tick: recorded in the tick_time column, "
                                                   "so ticks that came late show"}}}
    return {"type": "object", "title": "TicksRequestBody", "required": ["ticks"], "additionalProperties": False,
            "description": "control ticks a robot executed, in order (servers started with --record)",
            "properties": {"session_id": _ident("the recorded episode stream, per robot_id where both are given"),
                           "robot_id": _ident("the robot (the stream when there is no session_id)"),
                           "ticks": {"type": "array", "items": tick, "minItems": 1, "maxItems": max_ticks},
                           "episode_end": {"type": "boolean", "default": False,
                                           "description": "the last tick ends the episode"},
                           "success": {"type": ["boolean", "null"], "description": "outcome label of the episode"},
                           "stream": _ident("the robot's recorder (a new id each time it starts): with episode and "
                                            "each tick's index, a batch sent again is recorded once"),
                           "episode": _count("the stream's episode these ticks belong to, counted from 0")}}


def _count(description: str) -> dict:
    return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**62 - 1}, {"type": "null"}],
            "description": description}


def episode_end_request() -> dict:
    """POST /v1/episodes/end body (the same for every model)."""
    return {"type": "object", "title": "EpisodeEndBody",
            "description": "close a robot session's recorded episode (servers started with --record)",
            "properties": {"session_id": _ident("the session to close (else robot_id)"),
                           "robot_id": _ident("the robot whose session to close when there is no session_id"),
                           "success": {"type": ["boolean", "null"], "description": "outcome label of the episode"}}}


def specialise(schema: dict, itf: RobotInterface, max_body_bytes: int, min_deadline_ms: float,
               prefix_max: int = 0, instruction_required: bool = False) -> dict:
    """Put the served model's request bodies into an OpenAPI document (in place; returned for chaining)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["ActRequestBody"] = act_request(itf, min_deadline_ms, prefix_max, instruction_required)
    comps["TicksRequestBody"] = ticks_request(itf, max_body_bytes, instruction_required)
    comps["EpisodeEndBody"] = episode_end_request()
    schema.setdefault("info", {})["description"] = (
        schema.get("info", {}).get("description", "") + f" Served model: cameras {itf.cameras}, "
        f"state {itf.state_dim}, actions {itf.chunk_size} x {itf.action_dim} ({', '.join(itf.action_names)}), "
        f"committed actions per request at most {prefix_max} (prefix_max).")
    return schema
