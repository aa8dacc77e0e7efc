"""openpi policy protocol: msgpack-numpy frames and the mapping from openpi observation keys to the model's inputs.

openpi clients send {"observation/image": (H, W, 3) uint8, "observation/wrist_image": ..., "observation/state":
(D,), "prompt": str} as msgpack with numpy arrays encoded as {b"__ndarray__": True, b"data", b"dtype", b"shape"}.
An observation may also carry "committed_actions" (P, D_a) (models with model.prefix_max > 0): the actions the robot
executes before the answer can be used; the chunk returned starts with them. Clients that never send it are
answered as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from rfm.constants import COMMITTED, IMAGES, INSTRUCTION, STATE
from serving.codec import PayloadError, decode_committed, decode_image, loads

DEFAULT_IMAGE_KEYS = ("observation/image", "observation/wrist_image")


def unpack(frame: bytes) -> Any:
    """msgpack-numpy -> python objects with numpy arrays; arrays are checked, never unpickled."""
    return loads(frame, "msgpack")


def pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": list(a.shape)}


def pack(obj: Any) -> bytes:
    """python objects with numpy arrays -> msgpack-numpy bytes that openpi_client.msgpack_numpy.unpackb reads."""
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return pack_array(o)
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"cannot serialise {type(o).__name__}")

    return msgpack.packb(obj, default=default, use_bin_type=True)


def _lookup(obs: dict, key: str) -> Any:
    """obs[key], or a nested lookup along '/'-separated parts (ALOHA-style {"images": {"cam_high": ...}})."""
    if key in obs:
        return obs[key]
    node: Any = obs
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _as_uint8(value: Any, cam: str) -> Any:
    """openpi's float images (values in [0, 1], as its policies take them: 255 x value, truncated) as uint8; any
    other value as it came."""
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        return value
    if value.size and not (np.isfinite(value).all() and value.min() >= 0.0 and value.max() <= 1.0):
        raise PayloadError(f"image {cam!r}: a float image must hold values in [0, 1] (openpi's convention), got "
                           f"[{np.nanmin(value):g}, {np.nanmax(value):g}]" if np.isfinite(value).any() else
                           f"image {cam!r}: a float image must hold values in [0, 1], got NaN/inf")
    return (255 * value).astype(np.uint8)


@dataclass
class OpenpiMapping:
    """openpi keys -> model inputs. images: {openpi key: camera}; state: keys concatenated in order."""

    images: dict[str, str] = field(default_factory=dict)
    state: list[str] = field(default_factory=lambda: ["observation/state"])
    prompt: str = "prompt"

    @classmethod
    def default(cls, cameras: list[str]) -> OpenpiMapping:
        """observation/image -> 1st camera, observation/wrist_image -> 2nd, observation/image_<i> -> the rest."""
        keys = list(DEFAULT_IMAGE_KEYS) + [f"observation/image_{i}" for i in range(2, len(cameras))]
        return cls(images=dict(zip(keys, cameras)))

    @classmethod
    def from_file(cls, path: str | Path, cameras: list[str]) -> OpenpiMapping:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: openpi mapping file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        unknown = set(data) - {"images", "state", "prompt"} if isinstance(data, dict) else {"(not an object)"}
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; expected images, state, prompt")
        m = cls(images=dict(data.get("images", {})) or cls.default(cameras).images,
                state=list(data.get("state", ["observation/state"])), prompt=str(data.get("prompt", "prompt")))
        bad = [c for c in m.images.values() if c not in cameras]
        if bad:
            raise ValueError(f"{path}: images maps to unknown camera(s) {bad}; the model has {cameras}")
        return m

    def to_dict(self) -> dict:
        return {"images": self.images, "state": self.state, "prompt": self.prompt}

    def to_observation(self, obs: Any, cameras: list[str], sizes: dict[str, list[tuple[int, int]]],
                       any_size: bool = False) -> dict:
        """openpi observation dict -> rfm observation {"images", "state", "instruction"[, "committed_actions"]};
        errors name the keys. `any_size`: JPEG/PNG frames of any size are decoded (a server that resizes)."""
        if not isinstance(obs, dict):
            raise PayloadError(f"openpi observation must be a map of key -> value, got {type(obs).__name__}")
        images = {}
        for cam in cameras:
            keys = [k for k, c in self.images.items() if c == cam] + [f"observation/{cam}", f"observation/images/{cam}"]
            found = next((v for v in (_lookup(obs, k) for k in keys) if v is not None), None)
            if found is None:
                raise PayloadError(f"no image for camera {cam!r}: expected one of the keys {keys}; got keys "
                                   f"{sorted(map(str, obs))[:12]}")
            images[cam] = decode_image(_as_uint8(found, cam), cam, sizes[cam], any_size)
        parts = []
        for k in self.state:
            v = _lookup(obs, k)
            if v is None:
                raise PayloadError(f"state key {k!r} is missing; got keys {sorted(map(str, obs))[:12]}")
            try:
                parts.append(np.asarray(v, dtype=np.float32).reshape(-1))
            except (TypeError, ValueError) as e:
                raise PayloadError(f"state key {k!r} must hold numbers ({e})") from e
        prompt = _lookup(obs, self.prompt)
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise PayloadError(f"{self.prompt!r} must be a string, got {type(prompt).__name__}")
        out = {IMAGES: images, STATE: np.concatenate(parts) if parts else np.zeros(0, np.float32),
               INSTRUCTION: prompt}
        committed = decode_committed(obs.get(COMMITTED))
        if committed is not None:
            out[COMMITTED] = committed
        return out
