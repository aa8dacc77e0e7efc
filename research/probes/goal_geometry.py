"""Which cameras carry the goal's height? Fits goal xyz from where the goal marker appears in each camera.

For unseen reach-v3 scenes, each camera's goal-marker centroid (pixels, `MetaWorldEnv.goal_mask`) is recorded;
then, per camera set, a quadratic least-squares fit from the centroids to the true goal x, y, z is scored by
leave-one-out R^2 (1 = the pixels determine that coordinate; 0 = no better than its mean). A policy can only read
what its cameras show: if z has a low R^2 for a camera set, no amount of training on it will place the gripper at
the right height.

    .venv/bin/python research/probes/goal_geometry.py --cameras corner,topview,corner2,corner3 --seeds 60
Prints a table and writes research/probes/results/goal_geometry.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from rfm.sim.metaworld import EVAL_SEED_BASE, MetaWorldEnv

RESULTS = Path(__file__).parent / "results" / "goal_geometry.json"


def centroids(cameras: list[str], size: int, seeds: int, task: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(seeds, 2 * n_cam) marker centroids (NaN where invisible), (seeds, 3) true goals."""
    env = MetaWorldEnv(task, cameras, size)
    feats, goals = [], []
    try:
        for i in range(seeds):
            env.reset(EVAL_SEED_BASE + i)
            row = []
            for m in env.goal_mask().values():
                ys, xs = np.nonzero(m)
                row += [xs.mean(), ys.mean()] if len(xs) else [np.nan, np.nan]
            feats.append(row)
            goals.append(env.env._target_pos.copy())
    finally:
        env.close()
    return np.array(feats), np.array(goals), list(env.cameras)


def loo_r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out R^2 per target column of a quadratic least-squares fit."""
    def design(a: np.ndarray) -> np.ndarray:
        quad = [a[:, i] * a[:, j] for i in range(a.shape[1]) for j in range(i, a.shape[1])]
        return np.column_stack([np.ones(len(a)), a, *quad])

    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    pred = np.zeros_like(y)
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        coef, *_ = np.linalg.lstsq(design(x[keep]), y[keep], rcond=None)
        pred[i] = design(x[i:i + 1]) @ coef
    return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", default="corner,topview,corner2,corner3")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--task", default="reach-v3")
    args = ap.parse_args()
    feats, goals, cams = centroids(args.cameras.split(","), args.size, args.seeds, args.task)
    rows = []
    for k in (1, 2):
        for subset in itertools.combinations(range(len(cams)), k):
            cols = [2 * i + j for i in subset for j in (0, 1)]
            x = feats[:, cols]
            ok = ~np.isnan(x).any(1)
            r2 = loo_r2(x[ok], goals[ok])
            rows.append({"cameras": [cams[i] for i in subset], "visible": int(ok.sum()),
                         "r2": {a: round(float(v), 3) for a, v in zip("xyz", r2)}})
    print(f"{args.task}, {args.seeds} unseen seeds, {args.size} px: leave-one-out R^2 of goal x/y/z from marker centroids")
    print(f"{'cameras':<28} {'visible':>8} {'x':>7} {'y':>7} {'z':>7}")
    for r in rows:
        print(f"{'+'.join(r['cameras']):<28} {r['visible']:>8} " + " ".join(f"{r['r2'][a]:>7.3f}" for a in "xyz"))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"task": args.task, "seeds": args.seeds, "size": args.size, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
