"""LeRobotDataset v2.1 metadata (one parquet and one mp4 per episode, JSON-lines metadata), read-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rfm.data.episode import Episode
from rfm.data.errors import DatasetError

EPISODES_JSONL = "meta/episodes.jsonl"
TASKS_JSONL = "meta/tasks.jsonl"
EPISODES_STATS_JSONL = "meta/episodes_stats.jsonl"
DATA_PATH_V21 = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH_V21 = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DatasetError(path, None, "file is missing")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(path, None, f"line {n} is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DatasetError(path, None, f"line {n}: expected a JSON object")
        out.append(obj)
    return out


def read_v21_meta(root: Path, info: dict) -> tuple[list[str], list[Episode]]:
    """(tasks ordered by task_index, episodes) of a v2.x dataset."""
    tasks_path = root / TASKS_JSONL
    rows = read_jsonl(tasks_path)
    tasks = [""] * len(rows)
    for r in rows:
        i = r.get("task_index")
        if not isinstance(i, int) or not 0 <= i < len(rows) or not isinstance(r.get("task"), str):
            raise DatasetError(tasks_path, "task_index", f"expected task_index in 0..{len(rows) - 1} and a task string, found {r}")
        tasks[i] = r["task"]
    chunks = int(info.get("chunks_size") or 1000)
    data_tpl = info.get("data_path") or DATA_PATH_V21
    video_tpl = info.get("video_path") or VIDEO_PATH_V21
    video_keys = [k for k, ft in info["features"].items() if ft["dtype"] == "video"]
    stats = {}
    stats_path = root / EPISODES_STATS_JSONL
    if stats_path.exists():
        for r in read_jsonl(stats_path):
            stats[r.get("episode_index")] = {f: {k: np.asarray(v) for k, v in s.items()}
                                             for f, s in (r.get("stats") or {}).items()}
    eps_path = root / EPISODES_JSONL
    episodes = []
    for r in read_jsonl(eps_path):
        for key in ("episode_index", "length"):
            if not isinstance(r.get(key), int):
                raise DatasetError(eps_path, key, f"expected an integer, found {r.get(key)!r}")
        idx = r["episode_index"]
        fmt = {"episode_chunk": idx // chunks, "episode_index": idx}
        ep = Episode(index=idx, length=r["length"], tasks=list(r.get("tasks") or []),
                     data_file=root / data_tpl.format(**fmt), stats=stats.get(idx, {}))
        ep.videos = {k: (root / video_tpl.format(video_key=k, **fmt), 0.0) for k in video_keys}
        ep.meta = {k: v for k, v in r.items() if k not in ("episode_index", "length", "tasks")}
        episodes.append(ep)
    episodes.sort(key=lambda e: e.index)
    return tasks, episodes
