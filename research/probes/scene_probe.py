"""Shared by the probes that ask what a policy's encoder knows about unseen scenes (env_state_probe, keypoint_probe):
their command line, the scenes they look at, and the JSON file they append to (`append_result`, which goal_probe and
rollout_trace use too)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rfm.config import RobotInterface
from rfm.sim.metaworld import EVAL_SEED_BASE, MetaWorldEnv


def parse_args(doc: str, extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> argparse.Namespace:
    """The probes' common options; `extra` adds a probe's own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra is not None:
        extra(ap)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=EVAL_SEED_BASE,
                    help="first seed (default: unseen evaluation seeds; 0 = the training demos' scenes)")
    ap.add_argument("--k", type=int, default=0, help="scripted-expert steps before probing (0: the start pose)")
    return ap.parse_args()


def read_scenes(task: str, interface: RobotInterface, seeds: int, first_seed: int, k: int,
                read: Callable[[dict], Any]) -> tuple[np.ndarray | list, np.ndarray, np.ndarray]:
    """For each seed: reset, let the expert drive k steps, then read(observation).

    Returns (readings (S, ...) stacked when read returns arrays, else their list; environment states (S, 9);
    camera projections (N_cam, 3, 4)).
    """
    env = MetaWorldEnv(task, interface.cameras, interface.image_size[0])
    readings, truth = [], []
    try:
        for i in range(seeds):
            obs = env.reset(first_seed + i)
            for _ in range(k):
                obs, *_ = env.step(env.expert_action())
            readings.append(read(obs))
            truth.append(env.env_state())
        proj = np.array([env.camera_projections()[c] for c in interface.cameras])
    finally:
        env.close()
    stacked = isinstance(readings[0], np.ndarray) if readings else True
    return (np.array(readings) if stacked else readings), np.array(truth), proj


def append_result(path: Path, *results: dict) -> None:
    """Append results to the JSON list at path (the probes keep every run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*old, *results], indent=2))
    print(f"wrote {path}")
