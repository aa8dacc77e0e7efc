"""Observations for int8 calibration and parity checks: real dataset frames when given, else synthetic ones.

Calibration and parity never share a frame: calibration takes evenly spaced frames, parity takes the frames
half-way between them (held out).

For a model that takes committed actions (model.prefix_max > 0) the observations carry some too, so int8
calibration sees the prefix path and parity is measured on it: each row but every third commits a prefix of
1..prefix_max actions (seeded, so reproducible), the ground-truth actions that follow the frame in its episode
for dataset samples, a smooth random walk over the action stats for synthetic ones; every third row commits none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rfm.config import RobotInterface
from rfm.constants import ACTION, COMMITTED, IMAGES, INSTRUCTION, OBS_STATE, STATE

log = logging.getLogger(__name__)

SYNTHETIC_INSTRUCTIONS = (
    "pick up the red block",
    "push the button",
    "open the drawer",
    "close the door",
    "reach the target",
    "put the cube in the bowl",
)


@dataclass
class SampleSet:
    """Calibration and held-out observations, and where they came from."""

    calibration: list[dict]
    held_out: list[dict]
    source: str  # "dataset" or "synthetic"
    dataset: str | None = None
    action_range: np.ndarray | None = None  # (D_a,) max - min of dataset actions in robot units, when known


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-frequency random colour image (H, W, 3) uint8: closer to camera statistics than white noise."""
    coarse = rng.uniform(0, 255, (max(2, h // 16), max(2, w // 16), 3))
    yi = np.linspace(0, coarse.shape[0] - 1, h).round().astype(int)
    xi = np.linspace(0, coarse.shape[1] - 1, w).round().astype(int)
    img = coarse[yi][:, xi] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mean_std(stats: dict | None, key: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a stats entry, or (0, 1) when absent or of another length."""
    st = (stats or {}).get(key) or {}
    mean = np.asarray(st.get("mean", np.zeros(dim)), np.float32).reshape(-1)
    std = np.asarray(st.get("std", np.ones(dim)), np.float32).reshape(-1)
    if mean.shape[0] != dim or std.shape[0] != dim:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)
    return mean, std


def committed_lengths(n: int, prefix_max: int, seed: int = 0) -> np.ndarray:
    """(n,) int: how many committed actions each of n samples carries: 0 for every third row (and all rows when
    prefix_max is 0), else uniform in 1..prefix_max (seeded)."""
    if prefix_max <= 0:
        return np.zeros(n, np.int64)
    lens = np.random.default_rng(seed).integers(1, prefix_max + 1, n)
    lens[2::3] = 0
    return lens.astype(np.int64)


def synthetic_observations(
    interface: RobotInterface,
    n: int,
    stats: dict | None = None,
    instructions: list[str] | None = None,
    seed: int = 0,
    prefix_max: int = 0,
) -> list[dict]:
    """n observations with smooth random images, state drawn from the state stats (or N(0, 1)); with prefix_max
    > 0, committed actions (committed_lengths) that walk smoothly from a draw of the action stats (or N(0, 1))."""
    rng = np.random.default_rng(seed)
    h, w = interface.image_size
    mean, std = _mean_std(stats, OBS_STATE, interface.state_dim)
    texts = list(instructions or SYNTHETIC_INSTRUCTIONS)
    obs = [
        {
            IMAGES: {c: _smooth_image(rng, h, w) for c in interface.cameras},
            STATE: (mean + std * rng.standard_normal(interface.state_dim)).astype(np.float32),
            INSTRUCTION: texts[i % len(texts)],
        }
        for i in range(n)
    ]
    if prefix_max > 0:
        a_mean, a_std = _mean_std(stats, ACTION, interface.action_dim)
        walk = np.random.default_rng(seed + 1000)
        for o, p in zip(obs, committed_lengths(n, prefix_max, seed)):
            if p:
                z = walk.standard_normal(interface.action_dim) + np.cumsum(
                    0.3 * walk.standard_normal((int(p), interface.action_dim)), axis=0)
                o[COMMITTED] = (a_mean + a_std * z).astype(np.float32)
    return obs


def _open_dataset(path: str | Path) -> Any:
    try:
        from rfm.data.lerobot import LeRobotDataset
    except ImportError as e:
        raise FileNotFoundError(
            f"--calib-dataset {path}: reading datasets needs rfm.data.lerobot ({e})"
        ) from e
    if not Path(path).exists():
        raise FileNotFoundError(f"--calib-dataset {path}: no such directory (expected a LeRobot dataset)")
    return LeRobotDataset(path)


def _num_frames(ds: Any) -> int:
    for attr in ("num_frames", "total_frames"):
        if isinstance(getattr(ds, attr, None), int):
            return int(getattr(ds, attr))
    return len(ds)


def dataset_samples(path: str | Path, n_calib: int, n_held_out: int, interface: RobotInterface,
                    prefix_max: int = 0) -> SampleSet:
    """Evenly spaced frames of a LeRobot dataset: calibration frames, and held-out frames between them; with
    prefix_max > 0, most carry the ground-truth actions that follow them in their episode as committed actions."""
    from rfm.runtime.dataset_match import check_same_robot

    ds = _open_dataset(path)
    # frames of another robot calibrate the wrong ranges, and the parity measured on them says nothing of this one
    check_same_robot(ds, interface, "--calib-dataset", rate=False)
    total = _num_frames(ds)
    if total < 2:
        raise ValueError(f"--calib-dataset {path}: has {total} frame(s), need at least 2")
    n_calib = max(1, min(n_calib, total // 2))
    n_held_out = max(1, min(n_held_out, total - n_calib))
    calib_idx = np.linspace(0, total - 1, n_calib).round().astype(int)
    step = total / n_held_out
    held = (np.arange(n_held_out) * step + step / 2).astype(int).clip(0, total - 1)
    taken = set(calib_idx.tolist())
    held = [int(i) if int(i) not in taken else min(int(i) + 1, total - 1) for i in held]
    calib = [_frame(ds, int(i)) for i in calib_idx]
    held_out = [_frame(ds, i) for i in held]
    if prefix_max > 0:
        for frames, idx, seed in ((calib, calib_idx, 1), (held_out, held, 2)):
            for f, i, p in zip(frames, idx, committed_lengths(len(frames), prefix_max, seed)):
                gt = _following_actions(ds, int(i), int(p), interface.action_dim) if p else None
                if gt is not None:
                    f[COMMITTED] = gt
    acts = (
        np.stack([np.asarray(f.pop(ACTION), np.float32).reshape(-1) for f in calib + held_out if ACTION in f])
        if any(ACTION in f for f in calib + held_out)
        else None
    )
    stats_range = _dataset_action_range(ds)
    rng_ = stats_range if stats_range is not None else (None if acts is None else acts.max(0) - acts.min(0))
    return SampleSet(calib, held_out, "dataset", str(path), rng_)


def _frame(ds: Any, i: int) -> dict:
    """A runtime observation (+ "action") for frame i; bookkeeping keys (episode_index, ...) are dropped."""
    frame = ds.get_frame(i)
    return {k: frame[k] for k in (IMAGES, STATE, INSTRUCTION, ACTION) if k in frame}


def _following_actions(ds: Any, i: int, p: int, action_dim: int) -> np.ndarray | None:
    """The actions of frames i .. i+p-1 (p, D_a), cut at the end of frame i's episode; None when the dataset's
    actions are not of the model's width (the parity check then runs without committed actions)."""
    actions = getattr(ds, "actions", None)
    if actions is not None and hasattr(ds, "frame_episode"):
        stop = ds.frame_episode(i).stop
        out = np.asarray(actions[i : min(i + p, stop)], np.float32)
    else:  # a dataset without the action array: frame by frame, within the episode
        rows, ep = [], None
        for j in range(i, min(i + p, _num_frames(ds))):
            f = ds.get_frame(j)
            if ep is not None and f.get("episode_index") != ep:
                break
            ep = f.get("episode_index")
            rows.append(np.asarray(f[ACTION], np.float32).reshape(-1))
        out = np.stack(rows) if rows else np.zeros((0, action_dim), np.float32)
    out = out.reshape(len(out), -1)
    return out if len(out) and out.shape[1] == action_dim else None


def _dataset_action_range(ds: Any) -> np.ndarray | None:
    stats = getattr(ds, "stats", None)
    a = (stats or {}).get(ACTION) if isinstance(stats, dict) else None
    if a and "min" in a and "max" in a:
        return np.asarray(a["max"], np.float32).reshape(-1) - np.asarray(a["min"], np.float32).reshape(-1)
    return None


def synthetic_samples(
    interface: RobotInterface,
    n_calib: int,
    n_held_out: int,
    stats: dict | None = None,
    instructions: list[str] | None = None,
    prefix_max: int = 0,
) -> SampleSet:
    if n_calib:
        log.warning(
            "no --calib-dataset given: calibrating int8 on %d SYNTHETIC observations (and checking parity on "
            "%d more); int8 accuracy on real camera frames may differ",
            n_calib,
            n_held_out,
        )
    else:
        log.info("no --calib-dataset given: checking parity on %d synthetic observations", n_held_out)
    return SampleSet(
        synthetic_observations(interface, n_calib, stats, instructions, seed=1, prefix_max=prefix_max),
        synthetic_observations(interface, n_held_out, stats, instructions, seed=2, prefix_max=prefix_max),
        "synthetic",
    )
