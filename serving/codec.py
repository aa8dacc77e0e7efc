"""Wire formats of /v1/act and /v1/ws: JSON and msgpack bodies to observation dicts, results back. No pickle.

An array on the wire (images and, optionally, state) is one of:
  - msgpack/JSON map {"data": bytes (JSON: base64 string), "shape": [H, W, 3], "dtype": "uint8"}  (raw, no codec)
  - msgpack bytes of exactly H*W*3 uint8 (the model's image size, HWC order)
  - bytes (msgpack) or a base64 string (JSON, optionally a data: URL) of a JPEG or PNG file
  - a nested list of numbers (JSON or msgpack)
  - an openpi msgpack-numpy map {"__ndarray__": true, "data", "dtype", "shape"}

An observation may carry `committed_actions` (models with model.prefix_max > 0): the P actions the robot executes
from the observation's tick before the answer can be used, a list of P lists of D_a numbers (or a raw numeric
array); the chunk returned starts with them. Its shape and values are checked against the model when the request is
validated (rfm.runtime.observation.check_committed), before it is queued.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from rfm.config import did_you_mean
from rfm.constants import COMMITTED, IMAGES, INSTRUCTION, STATE
from rfm.runtime.observation import MAX_ABS_VALUE

MSGPACK = "application/msgpack"
JSON = "application/json"
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bool")
IMAGE_DTYPES = ("uint8", "|u1")  # a raw image map's dtype: the name, or numpy's dtype.str
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded JPEG/PNG size limit (decompression bombs)
MAX_ID_LEN = 128
MAX_DEADLINE_MS = 600_000
MAX_TICKS = 1024  # per POST /v1/ticks (the body limit bounds it too)


class PayloadError(ValueError):
    """A request body cannot be decoded; `status` is the HTTP code (415 content type, 422 content)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ActRequest:
    """One decoded request: the observation plus optional identifiers."""

    observation: dict  # {"images": {cam: array}, "state": array, "instruction": str[, "committed_actions": ...]}
    request_id: str | None = None
    robot_id: str | None = None
    session_id: str | None = None
    episode_end: bool = False  # recorder: this step ends the robot's episode
    success: bool | None = None  # recorder: outcome label for this step / episode
    correction: np.ndarray | None = None  # recorder: operator/expert action (D_a,) to learn from instead
    record: bool = True  # recorder: False when the robot reports its executed ticks on POST /v1/ticks instead
    deadline_ms: float | None = None  # answer within this many ms of arrival, else 503 at once (or 504); None: server's


@dataclass
class Tick:
    """One control tick a robot executed: its observation, the action, the chunk it came from, a correction."""

    observation: dict
    action: np.ndarray  # (D_a,) executed
    chunk: np.ndarray | None = None  # (H * D_a,) the predicted chunk the action came from
    label: np.ndarray | None = None  # (D_a,) the action to learn from instead (operator / expert)
    index: int | None = None  # the tick's number in its episode, counted by the robot from 0 (gaps, retries)
    time: float | None = None  # seconds on the robot's clock when it executed the tick (any origin: late ticks)


@dataclass
class TicksRequest:
    """POST /v1/ticks: a batch of one session's executed ticks, in order."""

    session_id: str | None
    robot_id: str | None
    ticks: list[Tick]
    episode_end: bool = False
    success: bool | None = None
    stream: str | None = None  # the robot's recorder (a new one per process): its episodes are counted from 0
    episode: int | None = None  # the stream's episode the ticks belong to


# --- content types -----------------------------------------------------------------------------------------
def body_format(content_type: str | None) -> str:
    """'json' or 'msgpack' from a Content-Type header; PayloadError(415) otherwise."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in MSGPACK_TYPES:
        return "msgpack"
    if ct == JSON or ct.endswith("+json"):
        return "json"
    raise PayloadError(f"Content-Type {content_type or '(none)'!r} is not supported: send {JSON!r} or {MSGPACK!r}",
                       status=415)


def loads(body: bytes, fmt: str) -> Any:
    """Parse a JSON or msgpack body; PayloadError(422) when it does not parse."""
    if fmt == "msgpack":
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True, object_hook=_ndarray_hook)
        except PayloadError:
            raise
        except Exception as e:  # msgpack raises many types for bad input
            raise PayloadError(f"body is not valid msgpack ({type(e).__name__}: {str(e)[:120]})") from e
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an integer over 4300 digits
        raise PayloadError(f"body is not valid JSON ({str(e)[:120]})") from e


def dumps(obj: Any, fmt: str) -> bytes:
    if fmt == "msgpack":
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


# --- arrays ------------------------------------------------------------------------------------------------
def _ndarray_hook(obj: dict) -> Any:
    """msgpack object_hook: openpi msgpack-numpy arrays ({b'__ndarray__': True, ...}) without pickle."""
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        get = lambda k: obj.get(k.encode(), obj.get(k))
        return raw_array(get("data"), get("shape"), get("dtype"), "array")
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        value = obj.get(b"data", obj.get("data"))
        if not isinstance(value, (int, float, bool)):
            raise PayloadError("msgpack-numpy scalar must hold a number")
        return value
    return obj


def _dtype(name: Any, what: str) -> np.dtype:
    dt = _allowed_dtype(name.decode(errors="replace") if isinstance(name, bytes) else str(name))
    if dt is None:
        raise PayloadError(f"{what}: dtype {str(name)[:40]!r} is not allowed; expected one of {ALLOWED_DTYPES}")
    return dt


@functools.lru_cache(maxsize=64)
def _allowed_dtype(name: str) -> np.dtype | None:
    """The numpy dtype a wire name denotes when it is one of ALLOWED_DTYPES, else None (cached: numpy's dtype
    parsing and naming cost ~10 us, per array of every request)."""
    try:
        dt = np.dtype(name)
    except Exception:  # noqa: BLE001 - numpy raises TypeError, ValueError, SyntaxError... for names it cannot parse
        return None
    return dt if dt.name in ALLOWED_DTYPES else None


def raw_array(data: Any, shape: Any, dtype: Any, what: str) -> np.ndarray:
    """A numpy array over raw bytes, after checking dtype, shape and byte count agree."""
    if isinstance(data, str):
        data = b64decode(data, what)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"{what}: 'data' must be bytes (msgpack) or base64 (JSON), got {type(data).__name__}")
    dt = _dtype(dtype if dtype is not None else "uint8", what)
    if not isinstance(shape, (list, tuple)) or len(shape) > 5 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape):
        raise PayloadError(f"{what}: 'shape' must be a list of up to 5 non-negative integers, got {shape!r}")
    if any(s > 2**31 for s in shape):  # with a 0 among them the byte count matches; numpy cannot build it
        raise PayloadError(f"{what}: shape {list(shape)[:5]} has a dimension over 2**31")
    need = math.prod(shape) * dt.itemsize
    if need != len(data):
        raise PayloadError(f"{what}: shape {list(shape)} of {dt.name} needs {need} bytes, 'data' has {len(data)}")
    return np.frombuffer(bytes(data), dtype=dt).reshape(shape)


def b64decode(text: str, what: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PayloadError(f"{what}: invalid base64 ({e})") from e


def decode_image_file(data: bytes, what: str, sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 from the bytes of a JPEG or PNG file. `sizes`: the (H, W) the camera may send; a file
    declaring another size is not decoded (a 48 kB PNG decodes to 50 MB): an undecoded stand-in of its size is
    returned, which the runtime refuses naming the size, as it would the decoded image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise PayloadError(f"{what}: image is {im.size[0]}x{im.size[1]} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS} allowed")
            if sizes and (im.size[1], im.size[0]) not in sizes:
                return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (im.size[1], im.size[0], 3))
            return np.asarray(im.convert("RGB"))
    except PayloadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses it before our own size check can see it
        raise PayloadError(f"{what}: image declares more than the {MAX_IMAGE_PIXELS} pixels allowed ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PayloadError(f"{what}: cannot decode image ({len(data)} bytes): expected a JPEG or PNG file, or raw "
                           f"uint8 pixels") from e


def decode_image(value: Any, cam: str, sizes: list[tuple[int, int]], any_size: bool = False) -> np.ndarray:
    """Any image encoding listed in the module docstring -> numpy array (validated later by the runtime).

    sizes: the (H, W) this camera may send (native, then the model's), for raw bytes that carry no shape, and the
    only sizes a JPEG/PNG is decoded at unless `any_size` (a server that resizes whatever it is sent)."""
    what = f"image {cam!r}"
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        dtype = value.get("dtype", "uint8")
        if dtype not in IMAGE_DTYPES:
            raise PayloadError(f"{what}: 'dtype' must be one of {list(IMAGE_DTYPES)} (images are 8-bit), got "
                               f"{str(dtype)[:40]!r}")
        return raw_array(value.get("data"), value.get("shape"), dtype, what)
    if isinstance(value, (bytes, bytearray)):
        for h, w in sizes:
            if len(value) == h * w * 3:
                return np.frombuffer(bytes(value), np.uint8).reshape(h, w, 3)
        return decode_image_file(bytes(value), what, None if any_size else sizes)
    if isinstance(value, str):
        return decode_image_file(b64decode(value, what), what, None if any_size else sizes)
    if isinstance(value, list):
        return nested_uint8(value, what)
    raise PayloadError(f"{what}: expected base64 JPEG/PNG, raw bytes, a {{data, shape, dtype}} map or a nested "
                       f"list, got {type(value).__name__}")


def nested_uint8(value: list, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise PayloadError(f"{what}: nested list is ragged or not numeric ({e})") from e
    if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise PayloadError(f"{what}: nested list must hold integers 0-255, got dtype {arr.dtype}"
                           + (f" with range [{arr.min()}, {arr.max()}]" if arr.size and arr.dtype.kind in "iuf"
                              else ""))
    return arr.astype(np.uint8)


def decode_state(value: Any, what: str = STATE) -> Any:
    """A raw array map -> numpy; a list must be flat and hold numbers only (true/false are not numbers)."""
    if isinstance(value, dict):
        return raw_array(value.get("data"), value.get("shape"), value.get("dtype", "float32"), what)
    if isinstance(value, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        bad = next(v for v in value if not isinstance(v, (int, float)) or isinstance(v, bool))
        raise PayloadError(f"{what} must be a flat list of numbers, got an element {str(bad)[:40]!r}")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def decode_committed(value: Any, what: str = COMMITTED) -> Any:
    """`committed_actions` as sent -> a list of lists of numbers or a numeric numpy array (None: absent).
    The form is checked here (a list of non-empty lists of numbers, or a numeric array); shape and values against
    the served model by the runtime's check_committed."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = raw_array(value.get("data"), value.get("shape"), value.get("dtype", "float32"), what)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise PayloadError(f"{what!r} must hold numbers, got an array of {value.dtype.name}")
        return value
    if not isinstance(value, list):
        raise PayloadError(f"{what!r} must be a list of actions, each a list of numbers, got {type(value).__name__}")
    for i, row in enumerate(value):
        if not isinstance(row, list) or not row or not all(_is_number(v) for v in row):
            raise PayloadError(f"{what!r}[{i}] must be a non-empty list of numbers (one action), got "
                               f"{str(row)[:40]!r}")
    return value


def is_ident(v: Any) -> bool:
    """Whether `v` can name a request, robot or session: 1-MAX_ID_LEN printable ASCII characters."""
    return isinstance(v, str) and 0 < len(v) <= MAX_ID_LEN and all(" " <= c <= "~" for c in v)


def _ident(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not is_ident(v):
        raise PayloadError(f"{key!r} must be a string of 1-{MAX_ID_LEN} printable ASCII characters, got "
                           f"{str(v)[:40]!r}")
    return v


ACT_FIELDS = frozenset({IMAGES, STATE, INSTRUCTION, COMMITTED, "request_id", "robot_id", "session_id", "episode_end",
                        "success", "correction", "record", "deadline_ms"})
TICK_FIELDS = frozenset({IMAGES, STATE, INSTRUCTION, "action", "chunk", "label", "index", "time"})
TICKS_FIELDS = frozenset({"session_id", "robot_id", "ticks", "episode_end", "success", "stream", "episode"})


def _count(obj: dict, key: str) -> int | None:
    """An optional whole number >= 0 (a tick's index, an episode's number)."""
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():  # JSON's 3.0 is the integer 3
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
        raise PayloadError(f"{key!r} must be a whole number >= 0, got {str(v)[:40]!r}")
    return v


def check_fields(obj: dict, allowed: frozenset, where: str = "") -> None:
    """PayloadError naming a field the body has and the API does not: a misspelt optional field (`sucess`,
    `deadline`) would otherwise be ignored without a word."""
    unknown = sorted(str(k)[:64] for k in obj if k not in allowed)  # echoed back: a 100 kB name is not
    if unknown:
        raise PayloadError(f"{where}unknown field {unknown[0]!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}:"
                           f" the fields are {', '.join(sorted(allowed))}.{did_you_mean(unknown[0], sorted(allowed))}")


UNKNOWN_CAMERA = np.zeros((0, 0, 3), np.uint8)  # an unknown camera's image, not decoded: the runtime names the camera


def parse_act(obj: Any, cameras: list[str], sizes: dict[str, list[tuple[int, int]]],
              fields: frozenset = ACT_FIELDS, any_size: bool = False) -> ActRequest:
    """Decoded body -> ActRequest with numpy images; unknown cameras pass through undecoded (the runtime names
    them), an unknown field is an error. `any_size`: JPEG/PNG frames of any size are decoded (resize_images)."""
    if not isinstance(obj, dict):
        raise PayloadError(f"body must be an object with {IMAGES!r}, {STATE!r}, {INSTRUCTION!r}, got "
                           f"{type(obj).__name__}")
    check_fields(obj, fields)
    images = obj.get(IMAGES)
    if not isinstance(images, dict):
        raise PayloadError(f"{IMAGES!r} must be an object of camera name -> image; the model expects cameras "
                           f"{cameras}, got {type(images).__name__}")
    if STATE not in obj:
        raise PayloadError(f"{STATE!r} is missing: expected a list of numbers")
    instruction = obj.get(INSTRUCTION, "")
    if not isinstance(instruction, str) or len(instruction) > 4096:
        raise PayloadError(f"{INSTRUCTION!r} must be a string of at most 4096 characters, got "
                           f"{type(instruction).__name__}")
    decoded = {str(cam): decode_image(img, str(cam), sizes.get(str(cam), []), any_size) if str(cam) in cameras
               else UNKNOWN_CAMERA for cam, img in images.items()}
    observation = {IMAGES: decoded, STATE: decode_state(obj[STATE]), INSTRUCTION: instruction}
    committed = decode_committed(obj.get(COMMITTED))
    if committed is not None:
        observation[COMMITTED] = committed
    record = obj.get("record", True)
    if not isinstance(record, bool):
        raise PayloadError(f"'record' must be true or false, got {str(record)[:40]!r}")
    deadline = obj.get("deadline_ms")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not 0 < deadline <= MAX_DEADLINE_MS):
        raise PayloadError(f"'deadline_ms' must be a number of milliseconds in (0, {MAX_DEADLINE_MS}], got "
                           f"{str(deadline)[:40]!r}")
    return ActRequest(observation, _ident(obj, "request_id"), _ident(obj, "robot_id"), _ident(obj, "session_id"),
                      *_labels(obj), record=record, deadline_ms=None if deadline is None else float(deadline))


def parse_ticks(obj: Any, cameras: list[str], sizes: dict[str, list[tuple[int, int]]],
                any_size: bool = False) -> TicksRequest:
    """Decoded POST /v1/ticks body -> TicksRequest; errors name the tick index and the field."""
    if not isinstance(obj, dict) or not isinstance(obj.get("ticks"), list):
        raise PayloadError("body must be an object with 'session_id' and 'ticks': a list of {images, state, "
                           "instruction, action[, chunk, label]}")
    check_fields(obj, TICKS_FIELDS)
    n = len(obj["ticks"])
    if n > MAX_TICKS or (n == 0 and obj.get("episode_end") is not True):
        raise PayloadError(f"'ticks' must hold 1-{MAX_TICKS} ticks (0 only with episode_end), got {n}")
    ticks = []
    for i, t in enumerate(obj["ticks"]):
        try:
            act = parse_act(t, cameras, sizes, TICK_FIELDS, any_size)
            index = _count(t, "index")
            when = t.get("time")
            if when is not None and (isinstance(when, bool) or not isinstance(when, (int, float))
                                     or not math.isfinite(when)):
                raise PayloadError(f"'time' must be a number of seconds (the robot's clock), got {str(when)[:40]!r}")
            arrays = {}
            for key in ("action", "chunk", "label"):
                if key not in t or t[key] is None:
                    if key == "action":
                        raise PayloadError("'action' is missing: the action executed at this tick")
                    continue
                arrays[key] = numbers(t[key], repr(key))
        except (PayloadError, TypeError, ValueError) as e:
            raise PayloadError(f"ticks[{i}]: {e}") from e
        ticks.append(Tick(act.observation, arrays["action"], arrays.get("chunk"), arrays.get("label"), index,
                          None if when is None else float(when)))
    end, success, _ = _labels({k: obj.get(k) for k in ("episode_end", "success") if k in obj})
    return TicksRequest(_ident(obj, "session_id"), _ident(obj, "robot_id"), ticks, end, success,
                        _ident(obj, "stream"), _count(obj, "episode"))


@dataclass
class EpisodeEnd:
    """POST /v1/episodes/end: which session's episode to close, and its outcome."""

    session_id: str | None
    robot_id: str | None
    success: bool | None


def parse_episode_end(obj: Any) -> EpisodeEnd:
    if not isinstance(obj, dict):
        raise PayloadError(f"body must be an object with 'session_id' or 'robot_id' and an optional 'success', got "
                           f"{type(obj).__name__}")
    _, success, _ = _labels({k: obj[k] for k in ("success",) if k in obj})
    return EpisodeEnd(_ident(obj, "session_id"), _ident(obj, "robot_id"), success)


def _labels(obj: dict) -> tuple[bool, bool | None, np.ndarray | None]:
    """Optional recording labels: episode_end (bool), success (bool), correction (list of D_a numbers)."""
    end, success, correction = obj.get("episode_end", False), obj.get("success"), obj.get("correction")
    if not isinstance(end, bool):
        raise PayloadError(f"'episode_end' must be true or false, got {str(end)[:40]!r}")
    if success is not None and not isinstance(success, bool):
        raise PayloadError(f"'success' must be true, false or null, got {str(success)[:40]!r}")
    if correction is not None:
        correction = numbers(correction, "'correction' (one number per action dimension)")
    return end, success, correction


def numbers(value: Any, what: str) -> np.ndarray:
    """A list (or raw array) of finite numbers of magnitude <= MAX_ABS_VALUE -> (N,) float32."""
    try:
        arr = np.asarray(decode_state(value, what), np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise PayloadError(f"{what} must be a list of numbers ({e})") from e
    if not np.all(np.abs(arr) <= MAX_ABS_VALUE):
        raise PayloadError(f"{what} has non-finite values (NaN/inf) or values beyond ±{MAX_ABS_VALUE:g}")
    return arr.astype(np.float32)


def encode_actions(actions: np.ndarray, fmt: str) -> Any:
    """(H, D_a) float32 -> nested lists (JSON) or a {data, shape, dtype} map (msgpack)."""
    if fmt == "msgpack":
        a = np.ascontiguousarray(actions, dtype=np.float32)
        return {"data": a.tobytes(), "shape": list(a.shape), "dtype": "float32"}
    return actions.astype(np.float64).round(6).tolist()
