"""Import HDF5 demonstrations into a LeRobot v3.0 dataset.

Two layouts:
- ALOHA/ACT: one file per episode with /observations/qpos (T, D_s), /observations/images/<cam> (T, H, W, 3)
  uint8 (or JPEG bytes when the root attribute `compress` is set), /action (T, D_a).
- robomimic: one file with data/demo_N/obs/<key> and data/demo_N/actions; image observations are the
  (T, H, W, 3) uint8 keys (camera name = key without the `_image` suffix), the state is the concatenation
  of the low-dimensional keys (all of them, sorted, unless `state_keys` is given).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from rfm.data.errors import DatasetError
from rfm.data.writer import LeRobotDatasetWriter


@dataclass
class Demo:
    """One episode read from HDF5: images {cam: (T, H, W, 3) uint8}, state (T, D_s), action (T, D_a)."""

    source: str
    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    state_names: list[str]


def _open(path: Path) -> h5py.File:
    """The file, read-only; a file that is not HDF5 (or is truncated) is a DatasetError naming it."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(path, None, f"not a readable HDF5 file ({e})") from None


def detect_layout(path: Path) -> str:
    with _open(path) as f:
        if "data" in f and any(k.startswith("demo") for k in f["data"]):
            return "robomimic"
        if "observations" in f and "action" in f:
            return "aloha"
    raise DatasetError(path, None, "unknown HDF5 layout: expected /observations + /action (ALOHA) or "
                                   "data/demo_N (robomimic)")


def _dataset(f: h5py.File | h5py.Group, key: str, path: Path) -> h5py.Dataset:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DatasetError(path, f"{f.name.rstrip('/')}/{key}", "dataset is missing")
    return f[key]


def _check_len(arr: np.ndarray, t: int, path: Path, field: str) -> np.ndarray:
    if arr.shape[0] != t:
        raise DatasetError(path, field, f"has {arr.shape[0]} steps, /action has {t}")
    return arr


def _decode_jpegs(rows: np.ndarray, path: Path, field: str) -> np.ndarray:
    try:
        return np.stack([np.asarray(Image.open(io.BytesIO(r.tobytes())).convert("RGB")) for r in rows])
    except OSError as e:
        raise DatasetError(path, field, f"cannot decode compressed image ({e})") from None


def read_aloha(path: Path, cameras: list[str] | None = None) -> Demo:
    with _open(path) as f:
        action = np.asarray(_dataset(f, "action", path), np.float32)
        t = action.shape[0]
        obs = f.get("observations")
        if obs is None:
            raise DatasetError(path, "/observations", "group is missing")
        qpos = _check_len(np.asarray(_dataset(obs, "qpos", path), np.float32), t, path, "/observations/qpos")
        img_group = obs.get("images", {})
        names = list(cameras) if cameras else sorted(img_group)
        images = {}
        for cam in names:
            field = f"/observations/images/{cam}"
            raw = np.asarray(_dataset(img_group, cam, path)) if cam in img_group else None
            if raw is None:
                raise DatasetError(path, field, "dataset is missing")
            if raw.ndim == 2 and f.attrs.get("compress", False):
                raw = _decode_jpegs(raw, path, field)
            if raw.ndim != 4 or raw.shape[-1] != 3 or raw.dtype != np.uint8:
                raise DatasetError(path, field, f"expected (T, H, W, 3) uint8, found {raw.shape} {raw.dtype}")
            images[cam] = _check_len(raw, t, path, field)
    return Demo(str(path), images, qpos.reshape(t, -1), action.reshape(t, -1),
                [f"qpos_{i}" for i in range(qpos.reshape(t, -1).shape[1])])


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def read_robomimic(path: Path, cameras: list[str] | None = None, state_keys: list[str] | None = None) -> Iterator[Demo]:
    with _open(path) as f:
        if "data" not in f:
            raise DatasetError(path, "/data", "group is missing")
        for name in sorted((k for k in f["data"] if k.startswith("demo")), key=_demo_sort_key):
            g = f["data"][name]
            action = np.asarray(_dataset(g, "actions", path), np.float32)
            t = action.shape[0]
            if "obs" not in g:
                raise DatasetError(path, f"/data/{name}/obs", "group is missing")
            obs = g["obs"]
            img_keys = [k for k in obs if obs[k].ndim == 4 and obs[k].dtype == np.uint8]
            low_keys = list(state_keys) if state_keys else sorted(k for k in obs if k not in img_keys)
            cams = {k.removesuffix("_image"): k for k in img_keys}
            if cameras:
                missing = [c for c in cameras if c not in cams]
                if missing:
                    raise DatasetError(path, f"/data/{name}/obs/{missing[0]}_image", f"camera is missing; found {sorted(cams)}")
                cams = {c: cams[c] for c in cameras}
            images = {c: _check_len(np.asarray(obs[k]), t, path, f"/data/{name}/obs/{k}") for c, k in cams.items()}
            parts, names = [], []
            for k in low_keys:
                arr = _check_len(np.asarray(_dataset(obs, k, path), np.float32).reshape(t, -1), t, path,
                                 f"/data/{name}/obs/{k}")
                parts.append(arr)
                names += [f"{k}_{i}" for i in range(arr.shape[1])]
            state = np.concatenate(parts, axis=1) if parts else np.zeros((t, 0), np.float32)
            yield Demo(f"{path}:/data/{name}", images, state, action.reshape(t, -1), names)


def iter_demos(paths: list[Path], layout: str = "auto", cameras: list[str] | None = None,
               state_keys: list[str] | None = None) -> Iterator[Demo]:
    for p in paths:
        kind = detect_layout(p) if layout == "auto" else layout
        if kind == "aloha":
            yield read_aloha(p, cameras)
        elif kind == "robomimic":
            yield from read_robomimic(p, cameras, state_keys)
        else:
            raise ValueError(f"layout={layout!r} is invalid: expected 'auto', 'aloha' or 'robomimic'")


def import_hdf5(paths: list[str | Path], out: str | Path, fps: int, task: str, layout: str = "auto",
                robot_type: str = "unknown", cameras: list[str] | None = None, state_keys: list[str] | None = None,
                use_videos: bool = True, vcodec: str | None = None, overwrite: bool = False) -> Path:
    """Write every demo of `paths` (files, or directories of *.hdf5/*.h5) into a new dataset at `out`, atomically."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted([*p.glob("*.hdf5"), *p.glob("*.h5")], key=lambda q: _demo_sort_key(q.stem))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"HDF5 input {p} does not exist")
    if not files:
        raise FileNotFoundError(f"no .hdf5/.h5 files in {[str(p) for p in paths]}")
    writer: LeRobotDatasetWriter | None = None
    try:
        for demo in iter_demos(files, layout, cameras, state_keys):
            if writer is None:
                writer = LeRobotDatasetWriter(
                    out, fps=fps, robot_type=robot_type,
                    cameras={c: tuple(v.shape[1:3]) for c, v in demo.images.items()},
                    state_names=demo.state_names, action_names=[f"action_{i}" for i in range(demo.action.shape[1])],
                    use_videos=use_videos, vcodec=vcodec, overwrite=overwrite)
            try:
                for i in range(demo.action.shape[0]):
                    writer.add_frame(images={c: v[i] for c, v in demo.images.items()}, state=demo.state[i],
                                     action=demo.action[i], task=task)
            except ValueError as e:
                raise DatasetError(demo.source, None, f"does not match the first demo: {e}") from None
            writer.save_episode(meta={"source": demo.source})
        if writer is None:
            raise DatasetError(files[0], None, "no demonstrations found")
        return writer.finalize()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
