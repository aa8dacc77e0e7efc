"""LeRobotDatasetWriter: write LeRobotDataset v3.0, atomically (build in a temp dir, rename at the end) or
incrementally (each saved episode is durable on its own; metadata rewritten by temp file + rename).

Atomic mode packs many episodes per data/video file (a parquet row group and a contiguous video segment per
episode). Incremental mode gives each episode its own data and video files and commits it by rewriting the open
episode-metadata file, so a crash loses at most the episode being recorded; `append()` reopens such a dataset.

Saving an episode costs the same after ten thousand episodes as after one, so a recording server can run for days:
episode metadata rolls over to a new file every `episodes_per_meta_file` episodes (only the open file is rewritten),
and incremental datasets keep their stats as a running merge of the episodes' stats (exact min, max, mean, std and
count; count-weighted quantiles, as lerobot aggregates) instead of holding every frame. Atomic datasets, written in
one go, get quantiles exact over all frames.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rfm.constants import ACTION, OBS_STATE, image_key
from rfm.data import lerobot_meta as lm
from rfm.data import stats as st
from rfm.data import video
from rfm.data.frames import encode_png
from rfm.files import discard_temp_dir, replace_dir, temp_dir_for


def _extra_feature(key: str, values: np.ndarray) -> dict:
    if values.dtype == np.bool_:
        dtype = "bool"
    elif np.issubdtype(values.dtype, np.integer):
        dtype = "int64"
    elif np.issubdtype(values.dtype, np.floating):
        dtype = "float32"
    else:
        raise ValueError(f"extra column {key!r}: dtype {values.dtype} is not supported (bool, int or float)")
    shape = [1] if values.ndim == 1 else [int(values.shape[1])]
    if values.ndim > 2:
        raise ValueError(f"extra column {key!r}: expected (T,) or (T, D) values, got shape {values.shape}")
    return {"dtype": dtype, "shape": shape, "names": None}


class LeRobotDatasetWriter:
    """Collect frames with add_frame(), close an episode with save_episode(), and finish with finalize()."""

    def __init__(self, root: str | Path, fps: int, robot_type: str = "unknown",
                 cameras: dict[str, tuple[int, int]] | None = None, state_names: list[str] | None = None,
                 action_names: list[str] | None = None, use_videos: bool = True, incremental: bool = False,
                 vcodec: str | None = None, overwrite: bool = False, extra_features: dict | None = None,
                 calibration: dict | None = None, ee_position: list[str] | None = None,
                 native_sizes: dict[str, tuple[int, int]] | None = None, aspect: str | None = None,
                 data_file_mb: int = lm.DATA_FILE_MB, video_file_mb: int = lm.VIDEO_FILE_MB,
                 episodes_per_meta_file: int = lm.EPISODES_PER_META_FILE) -> None:
        self.root = Path(root)
        self.fps = int(fps)
        if self.fps <= 0 or self.fps != fps:
            raise ValueError(f"fps={fps!r} is invalid: expected a positive integer (LeRobot stores integer fps)")
        if not action_names:
            raise ValueError("action_names is empty: a dataset needs at least one action dimension")
        self.cameras = {c: (int(h), int(w)) for c, (h, w) in (cameras or {}).items()}
        self.state_names, self.action_names = list(state_names or []), list(action_names)
        self.use_videos, self.incremental, self.overwrite = use_videos, incremental, overwrite
        self.encoder = video.resolve_encoder(vcodec) if use_videos and self.cameras else None
        for cam, (h, w) in self.cameras.items():
            if h < 8 or w < 8 or (self.encoder == "libx264" and (h % 2 or w % 2)):
                raise ValueError(f"camera {cam!r}: size {(h, w)} is invalid for {self.encoder or 'PNG'} storage "
                                 f"(at least 8x8; h264 needs even height and width)")
        self.data_file_mb, self.video_file_mb = data_file_mb, video_file_mb
        if episodes_per_meta_file < 1:
            raise ValueError(f"episodes_per_meta_file={episodes_per_meta_file}: expected >= 1")
        self.episodes_per_meta_file = int(episodes_per_meta_file)
        self._lock = threading.RLock()
        self._closed = False
        features: dict[str, dict] = {}
        for cam, (h, w) in self.cameras.items():
            features[image_key(cam)] = {"dtype": "video" if use_videos else "image", "shape": [h, w, 3],
                                        "names": ["height", "width", "channels"]}
        for cam, cal in (calibration or {}).items():  # the robot's geometry, read back as its interface's
            if cam not in self.cameras:
                raise ValueError(f"calibration names camera {cam!r}, not one of the dataset's {list(self.cameras)}")
            features[image_key(cam)]["calibration"] = cal
        for cam, size in (native_sizes or {}).items():  # frames stored smaller than the robot's camera sends them
            if cam not in self.cameras:
                raise ValueError(f"native_sizes names camera {cam!r}, not one of the dataset's {list(self.cameras)}")
            if tuple(size) != self.cameras[cam]:
                features[image_key(cam)]["native_size"] = [int(v) for v in size]
                features[image_key(cam)]["aspect"] = aspect or "resize"
        if self.state_names:
            features[OBS_STATE] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
            if ee_position:
                features[OBS_STATE]["ee_position"] = list(ee_position)
        features[ACTION] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
        features.update(extra_features or {})
        self.info = lm.new_info(self.fps, robot_type, features, use_videos and bool(self.cameras))
        self.info["data_files_size_in_mb"], self.info["video_files_size_in_mb"] = data_file_mb, video_file_mb
        self.tasks: list[str] = []
        self._task_index: dict[str, int] = {}  # task -> its index in self.tasks (a fleet's recording may hold many)
        self._tasks_on_disk = 0  # tasks in meta/tasks.parquet (incremental mode rewrites it only when one is added)
        self._init_episode_index()
        self._files_written = False  # extras may only be declared before the first episode is written
        self._reset_buffer()
        self._pq: pq.ParquetWriter | None = None
        self._pq_loc = (0, 0)
        self._videos: dict[str, tuple[video.VideoFileWriter, tuple[int, int]]] = {}
        if incremental:
            self._dir = self.root
            self._prepare_root()
            self._dir.mkdir(parents=True, exist_ok=True)
            lm.atomic_write_json(self._dir / lm.INFO_PATH, self.info)
        else:
            if self.root.exists() and not overwrite:
                raise FileExistsError(f"{self.root} already exists (pass overwrite=True to replace it at finalize)")
            self._dir = temp_dir_for(self.root)  # also cleans up after a writer of root that was killed

    def _prepare_root(self) -> None:
        """An empty root to write into; rfm's lock files in it (.rfm-*: a recorder's, held now) are kept."""
        entries = [p for p in self.root.iterdir() if not p.name.startswith(".rfm-")] if self.root.exists() else []
        if entries and not self.overwrite:
            raise FileExistsError(f"{self.root} already exists and is not empty (use append() to add episodes, "
                                  f"or overwrite=True)")
        for p in entries:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def _init_episode_index(self, saved: int = 0, last: dict | None = None) -> None:
        self._saved, self._last = saved, last  # episodes committed, and the newest one's metadata row
        self._meta_rows: list[dict] = []  # rows of the open meta/episodes file
        self._meta_loc = (0, 0)
        self._closed_rows: list[dict] = []  # atomic mode: rows of full meta files, written at finalize
        self._stats: dict[str, dict] = {}  # running merge of the episodes' stats, per feature
        self._values: dict[str, list[np.ndarray]] = {}  # atomic mode: numeric columns, for exact quantiles

    # --- reopening ----------------------------------------------------------------------------------------

    @classmethod
    def append(cls, root: str | Path, vcodec: str | None = None) -> LeRobotDatasetWriter:
        """Open an existing v3.0 dataset for incremental writing; files of uncommitted episodes are removed.
        New videos are in the dataset's own codec unless `vcodec` says otherwise."""
        from rfm.data.reader import LeRobotDataset

        ds = LeRobotDataset(root)
        if not ds.version.startswith("v3"):
            raise ValueError(f"{root}: append needs a v3.0 dataset, found {ds.version}")
        self = cls.__new__(cls)
        self.root = self._dir = Path(root)
        self.fps = int(ds.fps)
        self.info = dict(ds.info)
        feats = ds.features
        self.cameras = {c: tuple(ds.image_shape(c)[:2]) for c in ds.cameras}
        odd = [ds.camera_key(c) for c in ds.cameras if ds.camera_key(c) != image_key(c)]
        if odd:
            raise ValueError(f"{root}: append supports cameras named observation.images.<cam>, found {odd}")
        self.state_names, self.action_names = ds.state_names if OBS_STATE in feats else [], ds.action_names
        self.use_videos = any(ft["dtype"] == "video" for ft in feats.values())
        self.incremental, self.overwrite = True, False
        self.encoder = video.encoder_for_dataset(feats, vcodec) if self.use_videos else None
        self.data_file_mb = self.info.get("data_files_size_in_mb", lm.DATA_FILE_MB)
        self.video_file_mb = self.info.get("video_files_size_in_mb", lm.VIDEO_FILE_MB)
        self.episodes_per_meta_file = lm.EPISODES_PER_META_FILE
        self._lock, self._closed, self._files_written = threading.RLock(), False, True
        self.tasks = list(ds.tasks)
        self._task_index = {t: i for i, t in enumerate(self.tasks)}
        self._tasks_on_disk = len(self.tasks)
        files = sorted((self.root / lm.EPISODES_DIR).glob("*/*.parquet"))
        per_file = [lm.read_parquet(f).to_pylist() for f in files]
        rows = sorted((r for fr in per_file for r in fr), key=lambda r: r["episode_index"])
        self._init_episode_index(len(rows), rows[-1])
        self._remove_orphans(rows)
        # new episodes go on in the newest metadata file (lerobot's or ours); earlier files are never rewritten
        newest = max(range(len(files)), key=lambda i: max(r["episode_index"] for r in per_file[i]))
        self._meta_rows = per_file[newest]
        self._meta_loc = (int(files[newest].parent.name.split("-")[1]), int(files[newest].stem.split("-")[1]))
        for r in self._meta_rows:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = self._meta_loc
        self._roll_meta_file()
        # the dataset's stats (exact where it was written in one go) become the running merge new episodes join
        self._stats = {k: v for k, v in ds.stats.items() if "count" in v and "mean" in v}
        for key in feats:
            per_ep = [ep.stats.get(key) for ep in ds.episodes]
            if key not in self._stats and per_ep and all(s is not None and "count" in s for s in per_ep):
                self._stats[key] = st.aggregate(per_ep)
        self._pq, self._pq_loc, self._videos = None, (0, 0), {}
        self._reset_buffer()
        return self

    def _remove_orphans(self, rows: list[dict]) -> None:
        keep = set()
        for r in rows:
            keep.add(self.root / self.info["data_path"].format(chunk_index=r["data/chunk_index"],
                                                               file_index=r["data/file_index"]))
            for key in self._video_keys():
                keep.add(self.root / self.info["video_path"].format(
                    video_key=key, chunk_index=r[f"videos/{key}/chunk_index"], file_index=r[f"videos/{key}/file_index"]))
        for sub in ("data", "videos"):
            for p in (self.root / sub).rglob("*") if (self.root / sub).exists() else []:
                if p.is_file() and p not in keep:
                    p.unlink()

    # --- frames and episodes ------------------------------------------------------------------------------

    def _reset_buffer(self) -> None:
        self._buf: dict = {"images": {c: [] for c in self.cameras}, "state": [], "action": [], "task": [],
                           "timestamp": []}

    def _video_keys(self) -> list[str]:
        return [k for k, ft in self.info["features"].items() if ft["dtype"] == "video"]

    @property
    def num_episodes(self) -> int:
        return self._saved

    @property
    def num_frames(self) -> int:
        return int(self._last["dataset_to_index"]) if self._last else 0

    @property
    def pending_frames(self) -> int:
        return len(self._buf["action"])

    def add_frame(self, images: dict[str, np.ndarray] | None = None, state: np.ndarray | None = None,
                  action: np.ndarray | None = None, task: str = "", timestamp: float | None = None) -> None:
        """Buffer one timestep. images: {cam: (H, W, 3) uint8}; state (D_s,); action (D_a,); task: instruction."""
        with self._lock:
            self._check_open()
            images = images or {}
            if set(images) != set(self.cameras):
                raise ValueError(f"images has cameras {sorted(images)}, the dataset expects {sorted(self.cameras)}")
            for cam, img in images.items():
                h, w = self.cameras[cam]
                img = np.asarray(img)
                if img.shape != (h, w, 3) or img.dtype != np.uint8:
                    raise ValueError(f"field {image_key(cam)!r}: expected ({h}, {w}, 3) uint8, got {img.shape} {img.dtype}")
            s = np.asarray(state if state is not None else [], np.float32).reshape(-1)
            a = np.asarray(action, np.float32).reshape(-1) if action is not None else np.zeros(0, np.float32)
            if s.shape != (len(self.state_names),):
                raise ValueError(f"field {OBS_STATE!r}: state has {s.size} values, expected {len(self.state_names)}")
            if a.shape != (len(self.action_names),):
                raise ValueError(f"field {ACTION!r}: action has {a.size} values, expected {len(self.action_names)}")
            for key, values, names in ((OBS_STATE, s, self.state_names), (ACTION, a, self.action_names)):
                if not np.isfinite(values).all():  # the reader refuses them: a dataset written must stay readable
                    bad = [names[i] if i < len(names) else str(i) for i in np.flatnonzero(~np.isfinite(values))]
                    raise ValueError(f"field {key!r}: NaN or infinite value at {', '.join(bad)} (a sensor dropout?); "
                                     f"fill it or leave the frame out: the dataset would not be readable")
            if not isinstance(task, str) or not task:
                raise ValueError(f"field 'task': expected a non-empty instruction string, got {task!r}")
            try:  # a lone surrogate would fail every later write of the tasks table, not only this frame's
                task.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"field 'task': {task[:80]!r} is not valid Unicode text") from None
            for cam, img in images.items():
                self._buf["images"][cam].append(np.array(img, np.uint8, copy=True))
            self._buf["state"].append(s)
            self._buf["action"].append(a)
            self._buf["task"].append(task)
            self._buf["timestamp"].append(len(self._buf["timestamp"]) / self.fps if timestamp is None else float(timestamp))

    def clear_episode(self) -> None:
        """Drop the frames buffered since the last save_episode()."""
        with self._lock:
            self._reset_buffer()

    def discard_episode(self) -> int:
        """Drop the buffered frames (e.g. after save_episode failed on a full disk), so the next episode does not
        start with them; returns how many were dropped. Committed episodes are untouched."""
        with self._lock:
            n = self.pending_frames
            self._reset_buffer()
            return n

    def save_episode(self, extra: dict | None = None, meta: dict | None = None) -> int:
        """Write the buffered frames as one episode; returns its episode_index.

        extra: per-frame columns for this episode ({name: (T,) or (T, D)}), e.g. {"next.success": [...]};
        meta: episode-level scalars stored as extra columns of meta/episodes (e.g. {"seed": 3}).
        """
        with self._lock:
            self._check_open()
            t = self.pending_frames
            if t == 0:
                raise ValueError("save_episode() with no frames: call add_frame() first")
            ts = np.asarray(self._buf["timestamp"], np.float64)
            if t > 1 and not (np.diff(ts) > 0).all():
                raise ValueError("field 'timestamp': timestamps of the episode are not strictly increasing")
            drift = np.abs(ts - np.arange(t) / self.fps).max()
            if self._video_keys() and drift > 0.5 / self.fps:  # video frame i sits at i / fps in its segment
                raise ValueError(f"field 'timestamp': off the {self.fps} Hz grid by up to {drift:.3f} s; video "
                                 f"datasets need timestamp i ~ i / fps (drop or duplicate frames to resample)")
            ep = self.num_episodes
            start = self.num_frames
            for task in self._buf["task"]:
                if task not in self._task_index:
                    self._task_index[task] = len(self.tasks)
                    self.tasks.append(task)
            cols: dict[str, np.ndarray] = {}
            if self.state_names:
                cols[OBS_STATE] = np.stack(self._buf["state"])
            cols[ACTION] = np.stack(self._buf["action"])
            cols.update(self._extras(extra or {}, t))
            cols.update({"timestamp": ts.astype(np.float32), "frame_index": np.arange(t, dtype=np.int64),
                         "episode_index": np.full(t, ep, np.int64), "index": np.arange(start, start + t, dtype=np.int64),
                         "task_index": np.array([self._task_index[x] for x in self._buf["task"]], np.int64)})
            frames = {cam: np.stack(v) for cam, v in self._buf["images"].items()}
            row: dict = {"episode_index": ep, "tasks": list(dict.fromkeys(self._buf["task"])), "length": t}
            row.update(self._write_data(cols, frames))
            row.update({"dataset_from_index": start, "dataset_to_index": start + t})
            for cam, fr in frames.items():
                if self.info["features"][image_key(cam)]["dtype"] == "video":
                    row.update(self._write_video(cam, fr))
            ep_stats = {k: st.vector_stats(v) for k, v in cols.items()}
            ep_stats.update({image_key(cam): st.image_stats(fr) for cam, fr in frames.items()})
            row.update({f"stats/{f}/{k}": np.asarray(v).tolist() for f, s in ep_stats.items() for k, v in s.items()})
            row.update({"meta/episodes/chunk_index": self._meta_loc[0], "meta/episodes/file_index": self._meta_loc[1]})
            row.update(meta or {})
            self._files_written = True
            for k, s in ep_stats.items():
                self._stats[k] = st.aggregate([self._stats[k], s]) if k in self._stats else s
            if not self.incremental:
                for k, v in cols.items():
                    self._values.setdefault(k, []).append(v)
            self._meta_rows.append(row)
            self._saved, self._last = self._saved + 1, row
            self._reset_buffer()
            if self.incremental:
                self._write_meta(self._dir)
            self._roll_meta_file()
            return ep

    def _roll_meta_file(self) -> None:
        """Start the next meta/episodes file once the open one holds episodes_per_meta_file episodes."""
        if len(self._meta_rows) >= self.episodes_per_meta_file:
            if not self.incremental:
                self._closed_rows.extend(self._meta_rows)
            self._meta_rows = []
            self._meta_loc = lm.next_chunk_file(*self._meta_loc, self.info["chunks_size"])

    def _extras(self, extra: dict, t: int) -> dict[str, np.ndarray]:
        feats = self.info["features"]
        declared = [k for k in feats if k not in lm.DEFAULT_FEATURES and feats[k]["dtype"] not in lm.VISUAL
                    and k not in (OBS_STATE, ACTION)]
        out = {}
        for key, values in extra.items():
            arr = np.asarray(values)
            if arr.shape[:1] != (t,):
                raise ValueError(f"extra column {key!r}: has {arr.shape[0] if arr.ndim else 0} values, the episode has {t} frames")
            if key not in feats:
                if self._files_written:
                    raise ValueError(f"extra column {key!r} is new: extra columns must be the same in every episode "
                                     f"(declare it with extra_features=... or in the first episode)")
                feats[key] = _extra_feature(key, arr)
                declared.append(key)
            ft = feats[key]
            out[key] = arr.astype(np.dtype(ft["dtype"]))
        missing = [k for k in declared if k not in out]
        if missing:
            raise ValueError(f"extra column {missing[0]!r} is declared for this dataset but missing from this episode")
        # keep defaults last, as lerobot orders columns
        for k in list(lm.DEFAULT_FEATURES):
            feats[k] = feats.pop(k)
        return out

    def _write_data(self, cols: dict[str, np.ndarray], frames: dict[str, np.ndarray]) -> dict:
        feats = self.info["features"]
        arrays = {}
        for key, ft in feats.items():
            if ft["dtype"] == "video":
                continue
            if ft["dtype"] == "image":
                cam = key.split(".", 2)[-1]
                arrays[key] = pa.array([{"bytes": encode_png(img), "path": f"frame-{i:06d}.png"}
                                        for i, img in enumerate(frames[cam])], lm.IMAGE_STRUCT)
            elif list(ft["shape"]) == [1]:
                arrays[key] = pa.array(cols[key].reshape(-1), lm.arrow_type(ft, key))
            else:
                typ = lm.arrow_type(ft, key)
                flat = pa.array(cols[key].reshape(-1), typ.value_type)
                arrays[key] = pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
        schema = lm.data_schema(feats)
        table = pa.table([arrays[f.name] for f in schema], schema=schema)
        if self.incremental:
            loc = self._next_loc("data/chunk_index", "data/file_index")
            path = self._dir / self.info["data_path"].format(chunk_index=loc[0], file_index=loc[1])
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp, compression="snappy")
            lm.atomic_move(tmp, path)
        else:
            if self._pq is not None and self._pq_path().stat().st_size >= self.data_file_mb * 2**20:
                self._pq.close()
                self._pq = None
                self._pq_loc = lm.next_chunk_file(*self._pq_loc)
            if self._pq is None:
                self._pq_path().parent.mkdir(parents=True, exist_ok=True)
                self._pq = pq.ParquetWriter(self._pq_path(), schema, compression="snappy")
            self._pq.write_table(table)
            loc = self._pq_loc
        return {"data/chunk_index": loc[0], "data/file_index": loc[1]}

    def _pq_path(self) -> Path:
        return self._dir / self.info["data_path"].format(chunk_index=self._pq_loc[0], file_index=self._pq_loc[1])

    def _next_loc(self, chunk_col: str, file_col: str) -> tuple[int, int]:
        if not self._last:
            return 0, 0
        return lm.next_chunk_file(int(self._last[chunk_col]), int(self._last[file_col]), self.info["chunks_size"])

    def _write_video(self, cam: str, frames: np.ndarray) -> dict:
        key = image_key(cam)
        h, w = self.cameras[cam]
        prefix = f"videos/{key}/"
        if self.incremental:
            loc = self._next_loc(prefix + "chunk_index", prefix + "file_index")
            path = self._dir / self.info["video_path"].format(video_key=key, chunk_index=loc[0], file_index=loc[1])
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            writer = video.VideoFileWriter(tmp, self.fps, h, w, self.encoder)
            try:
                t0, t1 = writer.write(frames)
                writer.close()
            except BaseException:
                writer.abort()
                tmp.unlink(missing_ok=True)
                raise
            lm.atomic_move(tmp, path)
            if "info" not in self.info["features"][key]:
                self.info["features"][key]["info"] = {k: v for k, v in video.probe(path, key).items()
                                                      if k not in ("frames", "duration")}
        else:
            writer, loc = self._videos.get(cam, (None, (0, 0)))
            if writer is not None and writer.size_bytes() >= self.video_file_mb * 2**20:
                writer.close()
                writer, loc = None, lm.next_chunk_file(*loc, self.info["chunks_size"])
            if writer is None:
                path = self._dir / self.info["video_path"].format(video_key=key, chunk_index=loc[0], file_index=loc[1])
                writer = video.VideoFileWriter(path, self.fps, h, w, self.encoder)
                self._videos[cam] = (writer, loc)
            t0, t1 = writer.write(frames)
        return {prefix + "chunk_index": loc[0], prefix + "file_index": loc[1], prefix + "from_timestamp": t0,
                prefix + "to_timestamp": t1}

    # --- metadata -------------------------------------------------------------------------------------------

    def _dataset_stats(self) -> dict:
        out = dict(self._stats)
        out.update({k: st.vector_stats(np.concatenate(v)) for k, v in self._values.items() if v})  # exact quantiles
        return st.to_json(out)

    def _write_meta(self, base: Path) -> None:
        """Commit order: tasks, episodes (the commit point), stats, info.

        Incremental mode rewrites only the open metadata file (earlier ones are final); atomic mode writes them all.
        """
        info = self.info
        info["total_episodes"] = self.num_episodes
        info["total_frames"] = self.num_frames
        info["total_tasks"] = len(self.tasks)
        info["splits"] = {"train": f"0:{self.num_episodes}"} if self._saved else {}
        if not self.incremental or len(self.tasks) != self._tasks_on_disk:
            lm.atomic_write_parquet(base / lm.TASKS_PATH, lm.tasks_table(self.tasks))
            self._tasks_on_disk = len(self.tasks)
        if self._saved:
            files: dict[tuple[int, int], list[dict]] = {}
            for r in ([] if self.incremental else self._closed_rows) + self._meta_rows:
                files.setdefault((r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]), []).append(r)
            for (chunk, file), rows in files.items():
                cols = list(dict.fromkeys(k for r in rows for k in r))
                table = pa.table({c: [r.get(c) for r in rows] for c in cols})
                lm.atomic_write_parquet(base / lm.EPISODES_PATH.format(chunk_index=chunk, file_index=file), table)
            lm.atomic_write_json(base / lm.STATS_PATH, self._dataset_stats())
        lm.atomic_write_json(base / lm.INFO_PATH, info)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"writer for {self.root} is already finalized or aborted")

    def finalize(self) -> Path:
        """Close files and write the metadata; in atomic mode, rename the finished dataset into place."""
        with self._lock:
            self._check_open()
            if self.pending_frames:
                raise ValueError(f"{self.pending_frames} frames are not saved: call save_episode() or clear_episode()")
            if not self._saved:
                raise ValueError("finalize() with no saved episodes: nothing to write")
            if self.incremental:
                self._write_meta(self._dir)
                self._closed = True
                return self.root
            try:
                if self._pq is not None:
                    self._pq.close()
                    self._pq = None
                for cam, (writer, _) in self._videos.items():
                    writer.close()
                    key = image_key(cam)
                    self.info["features"][key]["info"] = {k: v for k, v in video.probe(writer.path, key).items()
                                                          if k not in ("frames", "duration")}
                self._write_meta(self._dir)
                replace_dir(self._dir, self.root)
            except BaseException:
                self.abort()
                raise
            self._closed = True
            return self.root

    def abort(self) -> None:
        """Atomic mode: delete everything written. Incremental mode: drop the unsaved episode, keep the rest."""
        with self._lock:
            self._reset_buffer()
            if self.incremental or self._closed:
                self._closed = True
                return
            if self._pq is not None:
                self._pq.close()
                self._pq = None
            for writer, _ in self._videos.values():
                writer.abort()
            self._videos.clear()
            discard_temp_dir(self._dir)
            self._closed = True

    def __enter__(self) -> LeRobotDatasetWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
