"""Numpy pre-processing shared by every runner: validate robot observations and stack them into a batch.

An observation (one robot, one timestep) is a dict:
    {"images": {camera: (H, W, 3) uint8}, "state": (D_s,) float, "instruction": str}
and optionally "committed_actions": (P, D_a) the actions the robot executes from this tick before the answer is
usable (delay-aware continuation; P <= the model's prefix_max).
with each camera's frame at its native size (interface.native_sizes) or the model's input size; frames are fitted to
the model's size here, by rfm.imaging, the same path training took.
Errors say what was expected and what arrived, and are raised before any model code runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfm.config import RobotInterface, did_you_mean
from rfm.constants import COMMITTED, IMAGES, INSTRUCTION, STATE
from rfm.imaging import fit_frame

MAX_ABS_VALUE = 1e9  # largest magnitude of a state or action value: any physical unit fits, and float32 networks
# stay finite (the default checkpoint up to 1e15); the API schema says so


class ObservationError(ValueError):
    """An observation does not match the robot interface; the message says what was expected and what arrived."""


@dataclass
class Batch:
    """Model-ready arrays for B observations."""

    images: np.ndarray  # (B, N_cam, 3, H, W) uint8
    state: np.ndarray  # (B, D_s) float32
    instructions: list[str]  # B strings
    prefix: np.ndarray | None = None  # (B, prefix_max, D_a) float32 committed actions, zero-padded; None: no row has any
    prefix_len: np.ndarray | None = None  # (B,) int64 how many of each row's are committed

    def __len__(self) -> int:
        return self.images.shape[0]


def check_image(cam: str, img: Any, interface: RobotInterface, resize: bool = False, where: str = "",
                out: np.ndarray | None = None) -> np.ndarray:
    """(3, h, w) uint8 at the model's input size from an (H, W, 3) or (3, H, W) uint8 frame, or a grey one ((H, W),
    (H, W, 1), (1, H, W): its value in all three channels, as training read it), written into `out` when given (a
    slot of the stacked batch: the layout change is then the only copy).

    A frame of the camera's declared native size (interface.native_sizes) or already of the model's size is
    accepted and fitted with rfm.imaging (the path training used); any other size is an error, unless `resize`
    (the server's --resize-images) fits it anyway.
    """
    arr, chw, hw = _frame_layout(cam, img, interface, resize, where)
    size = tuple(interface.image_size)
    out = np.empty((3, *size), np.uint8) if out is None else out
    if hw == size:
        np.copyto(out, arr if chw else arr.transpose(2, 0, 1))
        return out
    fitted = fit_frame(np.ascontiguousarray(arr.transpose(1, 2, 0)) if chw else arr, size, interface.aspect)
    np.copyto(out, fitted.transpose(2, 0, 1))
    return out


def _frame_layout(cam: str, img: Any, interface: RobotInterface, resize: bool = False,
                  where: str = "") -> tuple[np.ndarray, bool, tuple[int, int]]:
    """(frame, channels first, (H, W)) of a frame check_image takes; ObservationError naming what is wrong. Looks
    at the dtype and shape only: microseconds, whatever the frame's size."""
    size, native = tuple(interface.image_size), tuple(interface.native_size(cam))
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ObservationError(f"{where}image {cam!r} has dtype {arr.dtype}, expected uint8 (0-255)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[-1] != 3:
        arr = arr[0]
    if arr.ndim == 2:  # a grey (mono) camera: its recorded frames were read as grey RGB for training, so are these
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ObservationError(f"{where}image {cam!r} has shape {arr.shape}, expected (H, W, 3) = "
                               f"({native[0]}, {native[1]}, 3)")
    chw = arr.shape[0] == 3 and arr.shape[-1] != 3
    hw = tuple(arr.shape[1:] if chw else arr.shape[:2])
    if hw not in (size, native) and not resize:
        expected = f"{native[0]}x{native[1]} (interface.native_sizes.{cam})" if native != size else ""
        raise ObservationError(f"{where}image {cam!r} is {hw[0]}x{hw[1]} (H x W): expected "
                               f"{expected + ' or ' if expected else ''}the model's input size {size[0]}x{size[1]}")
    return arr, chw, hw


def check_observation_shape(obs: Mapping[str, Any], interface: RobotInterface, resize: bool = False) -> None:
    """What check_observation refuses, found without fitting a frame: camera names, each frame's dtype and size, the
    state's length and values, the instruction's type. A robot running its model itself calls it (through
    Runner.check_observation) on the tick that asks for a chunk, so a bad frame raises there."""
    images = _check_keys(obs, interface)
    for cam in interface.cameras:
        _frame_layout(cam, images[cam], interface, resize)
    check_state(obs.get(STATE, []), interface)
    _check_instruction(obs)


def accepted_sizes(interface: RobotInterface) -> dict[str, list[tuple[int, int]]]:
    """{camera: [(H, W), ...]} the frames a robot may send: its native size, then the model's input size."""
    return {c: list(dict.fromkeys([tuple(interface.native_size(c)), tuple(interface.image_size)]))
            for c in interface.cameras}


def check_state(state: Any, interface: RobotInterface, where: str = "") -> np.ndarray:
    """(D_s,) float32, finite, of the interface's length."""
    try:
        arr = np.asarray(state, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ObservationError(f"{where}state must be a list of numbers ({e})") from e
    if arr.shape[0] != interface.state_dim:
        raise ObservationError(f"{where}state has {arr.shape[0]} values, the model expects {interface.state_dim} "
                               f"({', '.join(interface.state_names)})")
    bad_mask = ~(np.abs(arr) <= MAX_ABS_VALUE)  # NaN compares False: caught here too
    if bad_mask.any():
        bad = [interface.state_names[i] for i in np.flatnonzero(bad_mask)]
        raise ObservationError(f"{where}state has non-finite values (NaN/inf) or values beyond ±{MAX_ABS_VALUE:g} "
                               f"in {bad}")
    return arr.astype(np.float32)


def check_committed(obs: Mapping[str, Any], interface: RobotInterface, prefix_max: int,
                    where: str = "") -> np.ndarray | None:
    """The observation's committed actions as (P, D_a) float32 (None when absent or empty); P <= prefix_max."""
    value = obs.get(COMMITTED) if isinstance(obs, Mapping) else None
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ObservationError(f"{where}{COMMITTED!r} must be a list of actions, each a list of numbers ({e})") from e
    if arr.size == 0:
        return None
    d_a = interface.action_dim
    if arr.ndim == 1 and arr.shape[0] == d_a:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != d_a:
        raise ObservationError(f"{where}{COMMITTED!r} has shape {arr.shape}, expected (P, {d_a}): P actions of "
                               f"{d_a} values ({', '.join(interface.action_names)})")
    if prefix_max == 0:
        raise ObservationError(f"{where}{COMMITTED!r} given, but this model takes no committed actions "
                               f"(model.prefix_max = 0: it was not trained for delay-aware continuation); "
                               f"leave the field out")
    if arr.shape[0] > prefix_max:
        raise ObservationError(f"{where}{COMMITTED!r} has {arr.shape[0]} actions, this model takes at most "
                               f"{prefix_max} (model.prefix_max)")
    if not np.all(np.abs(arr) <= MAX_ABS_VALUE):
        raise ObservationError(f"{where}{COMMITTED!r} has non-finite values (NaN/inf) or values beyond "
                               f"±{MAX_ABS_VALUE:g}")
    return arr.astype(np.float32)


def no_committed(n: int, prefix_max: int, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The prefix inputs of n rows that commit nothing: zeros (n, prefix_max, D_a) float32 and zeros (n,) int64."""
    return np.zeros((n, prefix_max, action_dim), np.float32), np.zeros(n, np.int64)


def stack_committed(rows: list[np.ndarray | None], prefix_max: int,
                    action_dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(prefix (B, prefix_max, D_a), prefix_len (B,)) from per-row committed actions; (None, None) when none has any."""
    if all(r is None for r in rows):
        return None, None
    prefix, lens = no_committed(len(rows), prefix_max, action_dim)
    for i, r in enumerate(rows):
        if r is not None:
            prefix[i, :len(r)], lens[i] = r, len(r)
    return prefix, lens


def check_camera_names(images: Any, interface: RobotInterface, where: str = "") -> Mapping:
    """`images` as a mapping holding exactly the interface's cameras (their frames are not looked at)."""
    if not isinstance(images, Mapping):
        raise ObservationError(f"{where}{IMAGES!r} must be a dict of camera name -> image; expected cameras "
                               f"{interface.cameras}")
    for cam in images:
        if cam not in interface.cameras:
            raise ObservationError(f"{where}unknown camera {str(cam)[:64]!r}: the model expects {interface.cameras}."
                                   f"{did_you_mean(str(cam)[:64], interface.cameras)}")
    missing = [c for c in interface.cameras if c not in images]
    if missing:
        raise ObservationError(f"{where}missing camera(s) {missing}: the model expects {interface.cameras}")
    return images


def check_observation(obs: Mapping[str, Any], interface: RobotInterface, resize: bool = False,
                      where: str = "") -> tuple[np.ndarray, np.ndarray, str]:
    """Validate one observation -> (images (N, 3, H, W) uint8, state (D_s,) float32, instruction)."""
    images = _check_keys(obs, interface, where)
    imgs = np.empty((len(interface.cameras), 3, *interface.image_size), np.uint8)
    for i, cam in enumerate(interface.cameras):
        check_image(cam, images[cam], interface, resize, where, out=imgs[i])
    state = check_state(obs.get(STATE, []), interface, where)
    return imgs, state, _check_instruction(obs, where)


def _check_keys(obs: Any, interface: RobotInterface, where: str = "") -> Mapping:
    """The observation's camera -> frame mapping, after checking it is a dict holding the keys and cameras the
    interface needs (its frames are not looked at)."""
    if not isinstance(obs, Mapping):
        raise ObservationError(f"{where}observation must be a dict with {IMAGES!r}, {STATE!r}, {INSTRUCTION!r}")
    for key in (IMAGES, STATE) if interface.state_dim else (IMAGES,):
        if key not in obs:  # a misspelt key ('states') would otherwise read as an empty one
            raise ObservationError(f"{where}{key!r} is missing (the observation has {sorted(map(str, obs))})."
                                   f"{did_you_mean(key, [str(k) for k in obs])}")
    return check_camera_names(obs.get(IMAGES), interface, where)


def _check_instruction(obs: Mapping, where: str = "") -> str:
    """The observation's instruction: a string of valid Unicode ("" when it sends none)."""
    instruction = obs.get(INSTRUCTION, "")
    if not isinstance(instruction, str):
        raise ObservationError(f"{where}{INSTRUCTION!r} must be a string, got {type(instruction).__name__}")
    try:
        instruction.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" is valid JSON): the tokenizer and the dataset fail
        raise ObservationError(f"{where}{INSTRUCTION!r} is not valid Unicode text ({e.reason} at character "
                               f"{e.start})") from None
    return instruction


def resolve_instruction(text: str, trained: Sequence[str], default: str | None = None, where: str = "") -> str:
    """The instruction to run for a request's `text`: itself; where it is empty, the server's default
    (--default-instruction), else the model's only trained instruction. A model trained on several instructions
    cannot guess the task: ObservationError (422) naming the field and what to send."""
    if text.strip():
        return text
    if default:
        return default
    if len(trained) == 1:
        return trained[0]
    if not trained:  # a model that records no instructions: nothing to choose from, run it as sent
        return text
    examples = "; ".join(repr(t) for t in list(trained)[:3]) + (" ..." if len(trained) > 3 else "")
    raise ObservationError(f"{where}{INSTRUCTION!r} is missing or empty: this model was trained on {len(trained)} "
                           f"instructions ({examples}); send the task with every request, or start the server "
                           f"with --default-instruction TEXT")


def make_batch(observations: list[Mapping[str, Any]], interface: RobotInterface, resize: bool = False,
               prefix_max: int = 0) -> Batch:
    """Stack validated observations into one Batch; the error names the index of a bad one."""
    if len(observations) == 0:
        raise ObservationError("empty batch: expected at least one observation")
    imgs, states, texts, committed = [], [], [], []
    for i, obs in enumerate(observations):
        where = f"observation[{i}]: " if len(observations) > 1 else ""
        im, st, tx = check_observation(obs, interface, resize, where=where)
        imgs.append(im)
        states.append(st)
        texts.append(tx)
        committed.append(check_committed(obs, interface, prefix_max, where))
    prefix, lens = stack_committed(committed, prefix_max, interface.action_dim)
    return Batch(np.stack(imgs), np.stack(states).reshape(len(observations), interface.state_dim), texts,
                 prefix, lens)


def check_batch_arrays(images: Any, state: Any, interface: RobotInterface) -> tuple[np.ndarray, np.ndarray]:
    """Validate already-stacked arrays: images (B, N_cam, 3, H, W) uint8, state (B, D_s) float32."""
    images = np.asarray(images)
    n, (h, w) = len(interface.cameras), interface.image_size
    if images.dtype != np.uint8:
        raise ObservationError(f"images have dtype {images.dtype}, expected uint8")
    if images.ndim != 5 or images.shape[1:] != (n, 3, h, w):
        raise ObservationError(f"images have shape {images.shape}, expected (B, {n}, 3, {h}, {w})")
    state = np.asarray(state, dtype=np.float32)
    if state.shape != (images.shape[0], interface.state_dim):
        raise ObservationError(f"state has shape {state.shape}, expected ({images.shape[0]}, {interface.state_dim})")
    if not np.all(np.isfinite(state)):
        raise ObservationError("state has non-finite values (NaN/inf)")
    return images, state
