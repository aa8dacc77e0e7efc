"""Episode: where one episode of a LeRobot dataset lives (shared by the v3.0 reader and the v2.1 metadata reader)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Episode:
    """Where one episode lives: rows [start, stop) of the frame arrays, its data file, its video segments."""

    index: int  # episode_index as stored
    length: int
    start: int = 0
    stop: int = 0
    tasks: list[str] = field(default_factory=list)
    data_file: Path = Path()
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # feature key -> (mp4, from_timestamp)
    meta: dict = field(default_factory=dict)  # extra episode-level columns (e.g. seed, env_task)
    stats: dict = field(default_factory=dict)  # per-episode stats when the metadata has them
