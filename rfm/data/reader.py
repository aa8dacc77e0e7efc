"""LeRobotDataset reader: v3.0 (many episodes per file) and v2.1 (one file per episode), no lerobot needed.

All numeric per-frame columns are loaded into numpy at open (cheap, and checked: shapes, lengths,
timestamps); images are decoded on demand per episode (video segment or PNG cells) and kept in a byte-bounded
LRU cache, so random access does not re-decode an episode each time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfm.constants import ACTION, OBS_IMAGES, OBS_STATE
from rfm.data import legacy, video
from rfm.data import lerobot_meta as lm
from rfm.data import stats as st
from rfm.data.cache import ByteLRU
from rfm.data.episode import Episode
from rfm.data.errors import DatasetError
from rfm.data.frames import column_to_numpy, decode_image

EPISODE_COLUMNS = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                   "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index"}


def _camera_name(key: str) -> str:
    if key.startswith(OBS_IMAGES + "."):
        return key[len(OBS_IMAGES) + 1:]
    return key.split(".", 1)[1] if key.startswith("observation.") else key


def _names(ft: dict | None, prefix: str) -> list[str]:
    if not ft:
        return []
    dim = int(np.prod(ft["shape"]))
    names = ft.get("names")
    if isinstance(names, dict):  # some lerobot datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}_{i}" for i in range(dim)]


def _check_finite(arrays: dict[str, np.ndarray], episodes: np.ndarray, path: Path, root: Path,
                  names: dict[str, list[str]]) -> None:
    """State and action must be numbers: a NaN (a sensor dropout, a failed read) would make the dataset's stats NaN
    and the first training step's loss NaN. DatasetError naming the file, the field, the episodes holding them and
    the dimensions by name, with the lerobot command that writes a copy without those episodes."""
    for key in (OBS_STATE, ACTION):
        if key not in arrays or not len(arrays[key]):
            continue
        values = arrays[key].reshape(len(arrays[key]), -1)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            eps = sorted({int(e) for e in episodes[bad]})
            first = int(np.argmax(bad))
            dims = [names[key][d] if d < len(names.get(key, [])) else str(d)
                    for d in np.flatnonzero(~np.isfinite(values[first])).tolist()]
            listed = ", ".join(map(str, eps[:20])) + (f" and {len(eps) - 20} more" if len(eps) > 20 else "")
            name = root.resolve().name
            raise DatasetError(path, key, f"{int(bad.sum())} frames hold NaN or infinite values, in episode(s) "
                                          f"{listed} (the first at row {first}: {', '.join(dims)}); fill them, or "
                                          f"write a copy without those episodes with lerobot (into "
                                          f"{root}/local/{name}-clean): lerobot-edit-dataset --repo_id local/{name} "
                                          f"--root {root} --new_repo_id local/{name}-clean --operation.type "
                                          f"delete_episodes --operation.episode_indices \"[{', '.join(map(str, eps))}]\"")


class LeRobotDataset:
    """A LeRobot dataset on disk. `LeRobotDataset(root)` detects v3.0 or v2.1 and validates what it loads."""

    def __init__(self, root: str | Path, cache_bytes: int = 512 << 20, check_finite: bool = True) -> None:
        """check_finite=False opens a dataset whose state or action holds NaN/inf (to look at it: rfm data info,
        view) and says what is wrong in `non_finite` instead of refusing it."""
        self.root = Path(root)
        self.check_finite = check_finite
        self.non_finite: list[str] = []  # with check_finite=False: what the check would have refused
        info_path = self.root / lm.INFO_PATH
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset directory {self.root} does not exist")
        self.info = lm.read_json(info_path)
        lm.validate_info(self.info, info_path)
        self.version = str(self.info["codebase_version"])
        self.features: dict[str, dict] = self.info["features"]
        self.fps = float(self.info["fps"])
        if self.fps.is_integer():
            self.fps = int(self.fps)
        self.robot_type: str = self.info.get("robot_type") or "unknown"
        if self.version.startswith("v3"):
            if self.info.get("total_episodes") == 0 and not (self.root / lm.TASKS_PATH).exists():
                raise DatasetError(info_path, "total_episodes", "the dataset has no episodes yet (a recording "
                                   "stopped before it saved one: its recorder starts it afresh)")
            self.tasks = lm.read_tasks(self.root / lm.TASKS_PATH)
            self.episodes = self._read_episodes_v30()
        elif self.version in ("v2.0", "v2.1"):
            self.tasks, self.episodes = legacy.read_v21_meta(self.root, self.info)
        else:
            raise DatasetError(info_path, "codebase_version",
                               f"expected 'v3.0' or 'v2.1', found {self.version!r}")
        if not self.episodes:
            raise DatasetError(self.root / lm.EPISODES_DIR, None, "the dataset has no episodes")
        self._cam_keys = {_camera_name(k): k for k, ft in self.features.items() if ft["dtype"] in lm.VISUAL}
        self._load_frames()
        self._check_totals(info_path)
        self._check_videos()
        self.stats = self._load_stats()
        self._pos = {ep.index: i for i, ep in enumerate(self.episodes)}
        self._starts = np.array([ep.start for ep in self.episodes])
        self._cache = ByteLRU(cache_bytes)

    # --- metadata ------------------------------------------------------------------------------------

    def _read_episodes_v30(self) -> list[Episode]:
        files = sorted((self.root / lm.EPISODES_DIR).glob("*/*.parquet"))
        if not files:
            raise DatasetError(self.root / lm.EPISODES_DIR, None, "no episode metadata parquet files")
        data_tpl = self.info.get("data_path") or lm.DATA_PATH
        video_tpl = self.info.get("video_path") or lm.VIDEO_PATH
        video_keys = [k for k, ft in self.features.items() if ft["dtype"] == "video"]
        out: list[Episode] = []
        for f in files:
            rows = lm.read_parquet(f).to_pylist()
            for r in rows:
                for col in ("episode_index", "length", "data/chunk_index", "data/file_index"):
                    if r.get(col) is None:
                        raise DatasetError(f, col, "column is missing or null")
                ep = Episode(index=int(r["episode_index"]), length=int(r["length"]), tasks=list(r.get("tasks") or []))
                ep.data_file = self.root / data_tpl.format(chunk_index=r["data/chunk_index"],
                                                           file_index=r["data/file_index"])
                for key in video_keys:
                    cols = [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
                    for c in cols:
                        if r.get(c) is None:
                            raise DatasetError(f, c, f"column is missing or null for episode {ep.index}")
                    path = self.root / video_tpl.format(video_key=key, chunk_index=r[cols[0]], file_index=r[cols[1]])
                    ep.videos[key] = (path, float(r[cols[2]]))
                ep.meta = {k: v for k, v in r.items() if k not in EPISODE_COLUMNS and not k.startswith(("stats/", "videos/"))}
                ep.stats = _unflatten_stats(r)
                out.append(ep)
        out.sort(key=lambda e: e.index)
        return out

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / lm.STATS_PATH
        if path.exists():
            raw = lm.read_json(path)
            if not isinstance(raw, dict):
                raise DatasetError(path, None, "expected a JSON object of {feature: {stat: values}}")
            return st.from_json(raw)
        ep_stats = [ep.stats for ep in self.episodes if ep.stats]
        if len(ep_stats) == len(self.episodes):
            keys = set.intersection(*(set(s) for s in ep_stats))
            return {k: st.aggregate([s[k] for s in ep_stats]) for k in keys}
        out = {}  # no stats on disk: compute the vector ones (images need decoding, skipped)
        if self.states.shape[1]:
            out[OBS_STATE] = st.vector_stats(self.states)
        out[ACTION] = st.vector_stats(self.actions)
        return out

    # --- frames ----------------------------------------------------------------------------------------

    def _numeric_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] not in lm.VISUAL and ft["dtype"] != "string"]

    def _load_frames(self) -> None:
        keys = self._numeric_keys()
        by_file: dict[Path, list[Episode]] = {}
        for ep in self.episodes:
            by_file.setdefault(ep.data_file, []).append(ep)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        offset = 0
        for path, eps in by_file.items():
            names = lm.parquet_columns(path)
            for k in keys:
                if k not in names:
                    raise DatasetError(path, k, "column is missing (meta/info.json declares the feature)")
            table = lm.read_parquet(path, columns=keys)  # numeric columns only: images stay on disk
            arrays = {k: column_to_numpy(table.column(k), self.features[k], k, path) for k in keys}
            ep_col = arrays["episode_index"]
            try:
                _check_finite(arrays, ep_col, path, self.root, {OBS_STATE: self.state_names, ACTION: self.action_names})
            except DatasetError as e:
                if self.check_finite:
                    raise
                self.non_finite.append(str(e))
            by_ep = np.argsort(ep_col, kind="stable")  # rows grouped by episode, file order kept inside a group
            sorted_eps = ep_col[by_ep]
            for ep in eps:
                lo, hi = np.searchsorted(sorted_eps, ep.index, "left"), np.searchsorted(sorted_eps, ep.index, "right")
                rows = by_ep[lo:hi]
                if len(rows) != ep.length:
                    raise DatasetError(path, "episode_index", f"episode {ep.index} has {len(rows)} rows, its episode "
                                                              f"metadata says length {ep.length}")
                order = rows[np.argsort(arrays["frame_index"][rows], kind="stable")]
                ts = arrays["timestamp"][order].astype(np.float64)
                if len(ts) > 1 and not (np.diff(ts) > 0).all():
                    bad = int(np.argmax(np.diff(ts) <= 0)) + 1
                    raise DatasetError(path, "timestamp", f"not increasing in episode {ep.index} at frame {bad} "
                                                          f"({ts[bad - 1]:.4f} then {ts[bad]:.4f})")
                for k in keys:
                    cols[k].append(arrays[k][order])
                ep.start, ep.stop = offset, offset + ep.length
                offset += ep.length
        self._arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
        self.num_frames = offset
        for k in ("episode_index", "frame_index", "index", "task_index"):
            self._arrays[k] = self._arrays[k].astype(np.int64)
        if ACTION not in self.features:
            raise DatasetError(self.root / lm.INFO_PATH, f"features.{ACTION}", "is missing: a dataset needs actions")
        self.actions = self._arrays[ACTION].astype(np.float32).reshape(self.num_frames, -1)
        if OBS_STATE in self._arrays:
            self.states = self._arrays[OBS_STATE].astype(np.float32).reshape(self.num_frames, -1)
        else:
            self.states = np.zeros((self.num_frames, 0), np.float32)
        self.episode_index = self._arrays["episode_index"]
        self.frame_index = self._arrays["frame_index"]
        self.timestamps = self._arrays["timestamp"].astype(np.float64)
        self.task_index = self._arrays["task_index"]
        if len(self.task_index) and (self.task_index.min() < 0 or self.task_index.max() >= len(self.tasks)):
            raise DatasetError(self.root / lm.TASKS_PATH, "task_index", f"data refers to task {self.task_index.max()}, "
                                                                        f"but only {len(self.tasks)} tasks exist")
        skip = {ACTION, OBS_STATE, "episode_index", "frame_index", "timestamp", "task_index", "index"}
        self.extras = {k: v for k, v in self._arrays.items() if k not in skip}

    def _check_totals(self, info_path: Path) -> None:
        """info.json totals may lag the episode metadata by the last episode (an interrupted incremental
        write commits episodes first), but never claim more than exists."""
        for key, have in (("total_episodes", len(self.episodes)), ("total_frames", self.num_frames)):
            want = self.info.get(key)
            if isinstance(want, int) and want > have:
                raise DatasetError(info_path, key, f"says {want}, but the episode metadata and data hold {have}")

    def _check_videos(self) -> None:
        """Open every referenced mp4 once: missing or truncated files fail here, not mid-training."""
        need: dict[tuple[Path, str], float] = {}
        for ep in self.episodes:
            for key, (path, start) in ep.videos.items():
                end = start + ep.length / self.fps
                need[(path, key)] = max(need.get((path, key), 0.0), end)
        for (path, key), end in need.items():
            info = video.probe(path, key)
            have = info["frames"] / self.fps if info["frames"] else info["duration"]
            if have + 0.5 / self.fps < end:
                raise DatasetError(path, key, f"video holds {have:.2f} s, the episode metadata needs {end:.2f} s "
                                              f"(truncated video?)")

    # --- public API --------------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def cameras(self) -> list[str]:
        return list(self._cam_keys)

    def camera_key(self, cam: str) -> str:
        if cam not in self._cam_keys:
            raise KeyError(f"camera {cam!r} is not in this dataset; cameras: {self.cameras}")
        return self._cam_keys[cam]

    def image_shape(self, cam: str) -> tuple[int, int, int]:
        ft = self.features[self.camera_key(cam)]
        shape = [int(v) for v in ft["shape"]]
        names = ft.get("names") or []
        if len(names) == 3 and names[0] in ("channel", "channels"):
            return shape[1], shape[2], shape[0]
        if not names and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):  # (C, H, W) written without names
            return shape[1], shape[2], shape[0]
        return shape[0], shape[1], shape[2]

    @property
    def state_names(self) -> list[str]:
        return _names(self.features.get(OBS_STATE), "state")

    @property
    def action_names(self) -> list[str]:
        return _names(self.features.get(ACTION), "action")

    @property
    def uses_video(self) -> bool:
        return any(ft["dtype"] == "video" for ft in self.features.values())

    def episode(self, ep: int) -> Episode:
        if ep not in self._pos:
            raise IndexError(f"episode {ep} is not in this dataset ({self.num_episodes} episodes)")
        return self.episodes[self._pos[ep]]

    def episode_range(self, ep: int) -> tuple[int, int]:
        e = self.episode(ep)
        return e.start, e.stop

    def episode_meta(self, ep: int) -> dict:
        return dict(self.episode(ep).meta)

    def instruction(self, i: int) -> str:
        return self.tasks[int(self.task_index[i])]

    def decode_episode(self, ep: int, cam: str, first: int | None = None) -> np.ndarray:
        """All frames of one camera in one episode -> (T, H, W, 3) uint8 (not cached); of an image camera, only the
        `first` ones where given (a check that the camera can be read)."""
        e = self.episode(ep)
        key = self.camera_key(cam)
        if self.features[key]["dtype"] == "video":
            path, start = e.videos[key]
            ts = self.timestamps[e.start:e.stop]
            return video.decode_segment(path, start, e.length, self.fps, key, timestamps=ts)
        table = lm.read_parquet(e.data_file, columns=[key, "frame_index"],
                                filters=[("episode_index", "=", e.index)])
        order = np.argsort(np.asarray(table.column("frame_index")), kind="stable")
        cells = table.column(key).to_pylist()
        if len(cells) != e.length:
            raise DatasetError(e.data_file, key, f"episode {ep} has {len(cells)} images, expected {e.length}")
        return np.stack([decode_image(cells[j], self.root, e.data_file, key) for j in order[:first]])

    def episode_frames(self, ep: int, cam: str) -> np.ndarray:
        """Like decode_episode, through the dataset's LRU cache; read-only (a view of the cached frames: writing
        into it would change every later read of them; copy it to edit)."""
        view = self._cache.get_or_compute((ep, cam), lambda: self.decode_episode(ep, cam)).view()
        view.flags.writeable = False
        return view

    def frame_episode(self, i: int) -> Episode:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range [0, {self.num_frames})")
        return self.episodes[int(np.searchsorted(self._starts, i, side="right")) - 1]

    def get_frame(self, i: int) -> dict:
        """One timestep: {"images": {cam: (H, W, 3) uint8}, "state", "action", "instruction", indices, time}."""
        e = self.frame_episode(i)
        return {
            "images": {cam: self.episode_frames(e.index, cam)[i - e.start].copy() for cam in self.cameras},
            "state": self.states[i].copy(), "action": self.actions[i].copy(), "instruction": self.instruction(i),
            "episode_index": int(self.episode_index[i]), "frame_index": int(self.frame_index[i]),
            "timestamp": float(self.timestamps[i]),
        }

    def __getitem__(self, i: int) -> dict:
        """ds[i]: frame i (get_frame), as lerobot's datasets index; negative indices count from the end."""
        n = self.num_frames
        if not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"frame index {i!r}: the dataset has {n} frames")
        return self.get_frame(int(i) % n)

    def __iter__(self):
        """Every frame in order (decodes as it goes; an episode's frames are decoded once and cached)."""
        for i in range(self.num_frames):
            yield self.get_frame(i)

    def __len__(self) -> int:
        return self.num_frames

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
                f"frames={self.num_frames}, fps={self.fps}, cameras={self.cameras})")


def _unflatten_stats(row: dict) -> dict:
    out: dict[str, dict] = {}
    for k, v in row.items():
        if k.startswith("stats/") and v is not None:
            feat, _, stat = k[len("stats/"):].rpartition("/")
            out.setdefault(feat, {})[stat] = np.asarray(v)
    return out
