"""Training windows: (images_t, state_t, instruction) -> actions t..t+H-1, from a LeRobotDataset.

Each episode's camera streams are decoded once, fitted to the model's image size (rfm.imaging, the same path as
serving), and kept as uint8 in a
byte-bounded LRU cache, so video decoding is not the training bottleneck. Works with DataLoader workers
(each worker fills its own cache).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from rfm.config import RobotInterface, did_you_mean
from rfm.constants import ACTION_EXECUTED, OBS_ENV_STATE, OBS_STATE
from rfm.data.cache import ByteLRU
from rfm.data.reader import LeRobotDataset
from rfm.imaging import fit_frames


def interface_from_dataset(ds: LeRobotDataset, chunk_size: int = 16, image_size: tuple[int, int] | None = None,
                           cameras: list[str] | None = None, overrides: dict | None = None) -> RobotInterface:
    """The RobotInterface a policy trained on `ds` serves: its cameras (with their recorded native sizes and, where
    the dataset records it, their calibration), state/action names, control rate, and the model's input size.

    image_size None = the first chosen camera's recorded (H, W). overrides: interface fields given by the user
    (calibration, ee_position, aspect, native_sizes) over what the dataset records.
    """
    cams = list(cameras) if cameras else ds.cameras
    for c in cams:
        if c not in ds.cameras:
            raise ValueError(f"camera {c!r} is not in dataset {ds.root}; cameras: {ds.cameras}.{did_you_mean(c, ds.cameras)}")
    if image_size is None:
        image_size = ds.image_shape(cams[0])[:2]
    stored = {"native_sizes": {c: list(ds.image_shape(c)[:2]) for c in cams}}
    geometry = {**stored, **recorded_geometry(ds, cams), **(overrides or {})}
    return RobotInterface(cameras=cams, image_size=tuple(image_size), state_names=ds.state_names,
                          action_names=ds.action_names, chunk_size=chunk_size, control_hz=float(ds.fps),
                          robot_type=ds.robot_type, **geometry)


def recorded_geometry(ds: LeRobotDataset, cameras: list[str]) -> dict:
    """Camera calibration, native sizes and end-effector position the dataset's metadata records (none for most
    field data).

    features.observation.images.<cam>.calibration, .native_size and .aspect (a recording stores frames at the
    model's input size: the robot's cameras send them at native_size) and features.observation.state.ee_position
    (rfm's writer puts them there: the recorder from the served interface, the simulator's generator from its
    cameras); datasets rfm generated in simulation before those keys record projections with the environment
    state (features.observation.environment_state.info.camera_projection) and the hand's x, y, z first in the
    state.
    """
    out: dict = {}
    cal = {c: ds.features[ds.camera_key(c)].get("calibration") for c in cameras}
    legacy = ds.features.get(OBS_ENV_STATE, {}).get("info", {}).get("camera_projection") or {}
    cal = {c: v if v is not None else ({"projection": legacy[c]} if c in legacy else None) for c, v in cal.items()}
    if any(v is not None for v in cal.values()):
        out["calibration"] = {c: v for c, v in cal.items() if v is not None}
    native = {c: ds.features[ds.camera_key(c)].get("native_size") for c in cameras}
    if any(v is not None for v in native.values()):
        out["native_sizes"] = {c: list(v) if v is not None else list(ds.image_shape(c)[:2]) for c, v in native.items()}
        aspects = {ds.features[ds.camera_key(c)].get("aspect") for c in cameras if native[c] is not None}
        if len(aspects) == 1 and None not in aspects:
            out["aspect"] = aspects.pop()
    ee = ds.features.get(OBS_STATE, {}).get("ee_position")
    if ee is None and legacy and list(ds.state_names[:3]) == ["hand_x", "hand_y", "hand_z"]:
        ee = list(ds.state_names[:3])
    if ee is not None:
        out["ee_position"] = list(ee)
    return out


def resize_frames(frames: np.ndarray, size: tuple[int, int], aspect: str = "resize") -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, h, w) uint8 through rfm.imaging.fit_frames (the path serving uses too)."""
    return torch.from_numpy(np.ascontiguousarray(fit_frames(frames, size, aspect))).permute(0, 3, 1, 2).contiguous()


class WindowDataset(Dataset):
    """One item per frame of the chosen episodes.

    item = {"images": (N_cam, 3, H, W) uint8, "state": (D_s,) f32, "actions": (H, D_a) f32 (the last action
    repeated past the episode end), "action_pad": (H,) bool (True where padded), "executed": (H, D_a) f32 (what the
    robot executed at those ticks, where a recording says so: `action` holds the expert's label there; else the
    actions themselves), "executed_recorded": bool, "instruction": str, "episode_index": int}; with
    env_state_dim > 0 also "env_state": (D_env,) f32 and "env_valid": bool (False, with zeros, where the dataset has
    no observation.environment_state, e.g. fleet recordings); with future=N > 0 also "future_images":
    (N_cam, 3, H, W) uint8, the frames N steps ahead (the episode's last past its end). keep: a mask over the
    dataset's frames (rfm.data.recording.frame_mask): items only at those frames.
    """

    def __init__(self, ds: LeRobotDataset, interface: RobotInterface, episodes: list[int] | None = None,
                 cache_bytes: int = 2 << 30, env_state_dim: int = 0, future: int = 0,
                 keep: np.ndarray | None = None) -> None:
        self.ds, self.interface = ds, interface
        self.env_state_dim, self.future = env_state_dim, future
        self.env_states = ds.extras.get(OBS_ENV_STATE) if env_state_dim else None
        if self.env_states is not None:
            self.env_states = self.env_states.astype(np.float32).reshape(len(ds.actions), -1)
            if self.env_states.shape[1] != env_state_dim:
                raise ValueError(f"dataset {ds.root}: {OBS_ENV_STATE} has {self.env_states.shape[1]} values, "
                                 f"expected {env_state_dim} (as in the first dataset that has it)")
        self.executed = ds.extras.get(ACTION_EXECUTED)
        if self.executed is not None:
            self.executed = self.executed.astype(np.float32).reshape(len(ds.actions), -1)
            if self.executed.shape[1] != ds.actions.shape[1]:
                raise ValueError(f"dataset {ds.root}: {ACTION_EXECUTED} has {self.executed.shape[1]} values, "
                                 f"{ds.actions.shape[1]} in action")
        for c in interface.cameras:
            if c not in ds.cameras:
                raise ValueError(f"interface camera {c!r} is not in dataset {ds.root}; cameras: {ds.cameras}")
        if ds.states.shape[1] != interface.state_dim:
            raise ValueError(f"dataset state has {ds.states.shape[1]} values, the interface expects {interface.state_dim}")
        if ds.actions.shape[1] != interface.action_dim:
            raise ValueError(f"dataset action has {ds.actions.shape[1]} values, the interface expects {interface.action_dim}")
        eps = [e.index for e in ds.episodes] if episodes is None else list(episodes)
        self.episodes = [ds.episode(e) for e in eps]
        self.frames = np.concatenate([np.arange(e.start, e.stop) for e in self.episodes]) if self.episodes \
            else np.zeros(0, np.int64)
        self.frame_ep = np.concatenate([np.full(e.length, i) for i, e in enumerate(self.episodes)]) if self.episodes \
            else np.zeros(0, np.int64)
        if keep is not None:  # items only at the frames to learn from; their windows still run on through the episode
            kept = keep[self.frames]
            self.frames, self.frame_ep = self.frames[kept], self.frame_ep[kept]
        self.cache = ByteLRU(cache_bytes)
        h, w = interface.image_size
        need = len(self.frames) * len(interface.cameras) * 3 * h * w
        if need > cache_bytes:
            warnings.warn(f"decoded frames of the chosen episodes need {need / 2**30:.1f} GiB, the frame cache holds "
                          f"{cache_bytes / 2**30:.1f} GiB per worker: episodes will be decoded repeatedly; raise "
                          f"cache_bytes or train on fewer episodes per run", stacklevel=2)
        self._offsets = np.arange(interface.chunk_size)

    def __len__(self) -> int:
        return len(self.frames)

    def episode_images(self, ep: int) -> torch.Tensor:
        """(T, N_cam, 3, H, W) uint8 for one episode, decoded once and cached."""
        def load() -> torch.Tensor:
            cams = [resize_frames(self.ds.decode_episode(ep, c), self.interface.image_size, self.interface.aspect)
                    for c in self.interface.cameras]
            return torch.stack(cams, dim=1)
        return self.cache.get_or_compute(ep, load)

    def __getitem__(self, i: int) -> dict:
        g = int(self.frames[i])
        e = self.episodes[int(self.frame_ep[i])]
        idx = g + self._offsets
        pad = idx >= e.stop
        idx = np.minimum(idx, e.stop - 1)
        actions = torch.from_numpy(self.ds.actions[idx])
        frames = self.episode_images(e.index)
        item = {
            "images": frames[g - e.start],
            "state": torch.from_numpy(self.ds.states[g].copy()),
            "actions": actions,
            "action_pad": torch.from_numpy(pad),
            "executed": actions if self.executed is None else torch.from_numpy(self.executed[idx]),
            "executed_recorded": self.executed is not None,
            "instruction": self.ds.instruction(g),
            "episode_index": e.index,
        }
        if self.future:
            item["future_images"] = frames[min(g + self.future, e.stop - 1) - e.start]
        if self.env_state_dim:
            has = self.env_states is not None
            item["env_state"] = torch.from_numpy(self.env_states[g].copy()) if has \
                else torch.zeros(self.env_state_dim)
            item["env_valid"] = has
        return item


def collate_windows(items: list[dict]) -> dict:
    """Stack items: images (B, N, 3, H, W) uint8, state (B, D_s), actions and executed (B, H, D_a), action_pad (B, H),
    executed_recorded (B,)."""
    env = {"env_state": torch.stack([it["env_state"] for it in items]),
           "env_valid": torch.tensor([it["env_valid"] for it in items])} if "env_state" in items[0] else {}
    if "future_images" in items[0]:
        env["future_images"] = torch.stack([it["future_images"] for it in items])
    return env | {
        "images": torch.stack([it["images"] for it in items]),
        "state": torch.stack([it["state"] for it in items]),
        "actions": torch.stack([it["actions"] for it in items]),
        "action_pad": torch.stack([it["action_pad"] for it in items]),
        "executed": torch.stack([it["executed"] for it in items]),
        "executed_recorded": torch.tensor([it["executed_recorded"] for it in items]),
        "instruction": [it["instruction"] for it in items],
        "episode_index": torch.tensor([it["episode_index"] for it in items], dtype=torch.long),
    }
