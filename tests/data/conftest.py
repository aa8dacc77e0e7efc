"""Shared helpers for dataset tests: small synthetic datasets written with the real writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from rfm.data.lerobot import LeRobotDatasetWriter

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "lerobot-v3.0"
if not FIXTURES.exists():  # CI clones main with shared/ beside it; developers have /work/shared
    FIXTURES = Path("/work/shared/fixtures/lerobot-v3.0")


def square_frame(i: int, h: int = 48, w: int = 48, value: int = 255) -> np.ndarray:
    """Black frame with a white 8x8 square at (i, i): easy to check after lossy video coding."""
    img = np.zeros((h, w, 3), np.uint8)
    img[i % (h - 8): i % (h - 8) + 8, i % (w - 8): i % (w - 8) + 8] = value
    return img


@dataclass
class Written:
    root: Path
    states: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    frames: dict = field(default_factory=dict)
    tasks: list = field(default_factory=list)
    lengths: list = field(default_factory=list)


def write_dataset(root: Path, use_videos: bool = True, lengths: tuple[int, ...] = (12, 15, 9), incremental: bool = False,
                  cameras: dict | None = None, vcodec: str | None = None, seed: int = 0) -> Written:
    cameras = cameras or {"front": (48, 48), "wrist": (32, 40)}
    rng = np.random.default_rng(seed)
    out = Written(root, frames={c: [] for c in cameras}, lengths=list(lengths))
    w = LeRobotDatasetWriter(root, fps=10, robot_type="test", cameras=cameras, state_names=["x", "y", "z"],
                             action_names=["vx", "vy"], use_videos=use_videos, incremental=incremental, vcodec=vcodec)
    for ep, t in enumerate(lengths):
        task = ["pick the cube", "open the drawer"][ep % 2]
        for i in range(t):
            imgs = {c: square_frame(i + ep, h, wd) for c, (h, wd) in cameras.items()}
            s, a = rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)
            w.add_frame(images=imgs, state=s, action=a, task=task)
            out.states.append(s)
            out.actions.append(a)
            out.tasks.append(task)
            for c in cameras:
                out.frames[c].append(imgs[c])
        w.save_episode(extra={"next.success": np.arange(t) == t - 1}, meta={"seed": 100 + ep})
    w.finalize()
    return out


@pytest.fixture(scope="session")
def video_dataset(tmp_path_factory) -> Written:
    return write_dataset(tmp_path_factory.mktemp("video") / "ds", use_videos=True)


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory) -> Written:
    return write_dataset(tmp_path_factory.mktemp("image") / "ds", use_videos=False)
