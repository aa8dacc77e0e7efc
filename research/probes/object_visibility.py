"""Which cameras keep object 1 (the puck, the peg) in view while the hand reaches for it? Pixels per camera.

Triangulated points are only as good as the worse of the two views: a camera that loses the object under the hand
moves the point exactly when the policy grasps. For each task and unseen seed the scripted expert drives the
episode and, every `--every` steps, `MetaWorldEnv.object_pixels` counts the pixels each camera spends on object 1
(rendered with and without it). Only cameras fixed to the world are worth comparing here: behindGripper and
gripperPOV ride on the hand, and the model's triangulation assumes fixed camera matrices.

    .venv/bin/python research/probes/object_visibility.py --cameras corner,topview,corner2,corner3 --seeds 5
Prints a table and writes research/probes/results/object_visibility.json (appended).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scene_probe import append_result

from rfm.sim.metaworld import EVAL_SEED_BASE, MetaWorldEnv, expand_tasks

RESULTS = Path(__file__).parent / "results" / "object_visibility.json"


def visibility(task: str, cameras: list[str], size: int, seeds: int, steps: int, every: int) -> dict[str, list]:
    """{camera: [[pixels at step 0, every, 2 * every, ...] per seed]} along the expert's trajectory."""
    env = MetaWorldEnv(task, cameras, size)
    out: dict[str, list] = {c: [] for c in cameras}
    try:
        for i in range(seeds):
            env.reset(EVAL_SEED_BASE + i)
            rows: dict[str, list[int]] = {c: [] for c in cameras}
            for t in range(steps + 1):
                if t % every == 0:
                    for c, px in env.object_pixels().items():
                        rows[c].append(px)
                if t < steps:
                    env.step(env.expert_action())
            for c in cameras:
                out[c].append(rows[c])
    finally:
        env.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="push-v3,pick-place-v3,peg-insert-side-v3")
    ap.add_argument("--cameras", default="corner,topview,corner2,corner3")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=105, help="expert steps per episode")
    ap.add_argument("--every", type=int, default=15)
    args = ap.parse_args()
    cameras = args.cameras.split(",")
    probe_steps = list(range(0, args.steps + 1, args.every))
    result = {"cameras": cameras, "size": args.size, "seeds": args.seeds, "first_seed": EVAL_SEED_BASE,
              "steps": probe_steps, "tasks": {}}
    print(f"object-1 pixels per camera at {args.size} px, mean over {args.seeds} unseen seeds, "
          f"at expert steps {probe_steps}")
    for task in expand_tasks(args.tasks):
        per_cam = visibility(task, cameras, args.size, args.seeds, args.steps, args.every)
        result["tasks"][task] = {}
        for cam, rows in per_cam.items():
            px = np.asarray(rows, float)
            mean, hidden = px.mean(0).round(1).tolist(), float((px == 0).mean())
            result["tasks"][task][cam] = {"mean_px": mean, "hidden_fraction": round(hidden, 3), "px": rows}
            print(f"{task:<22}{cam:<15}{' '.join(f'{m:>5.0f}' for m in mean)}   hidden {hidden:>4.0%}")
    append_result(RESULTS, result)


if __name__ == "__main__":
    main()
