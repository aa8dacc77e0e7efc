"""Does a policy act on its triangulated points? Move one point the model sees and measure how its actions move.

For checkpoints with `model.vision_points`: on unseen scenes (k expert steps after reset), the point token's world
point p is shifted by +-delta along x, y and z before the token is built, and the mean of the first n predicted
actions is compared with the unshifted prediction. The table is d(action) / d(point) per cm. For reach's goal
(point 2) the scripted expert moves with 5 x (goal - hand) clipped to +-1, i.e. 0.05 per cm on the matching axis:
a policy near 0 there ignores the token (the goal then reaches it only through the image tokens, if at all).

    .venv/bin/python research/probes/point_sensitivity.py --checkpoint runs/X/checkpoint --tasks reach-v3 --seeds 10
Prints a table and writes research/probes/results/point_sensitivity.json (appended).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from scene_probe import append_result, parse_args, read_scenes

from rfm.model.policy import RFMPolicy
from rfm.runtime.observation import make_batch
from rfm.sim.metaworld import expand_tasks, instructions_for

RESULTS = Path(__file__).parent / "results" / "point_sensitivity.json"
AXES = "xyz"


@contextmanager
def shifted(token, point: int, shift: torch.Tensor):
    """Within the block the token sees world point `point` moved by `shift` (3,) metres."""
    original = token.world_points

    def moved(uv, logits):
        pts, spread = original(uv, logits)
        pts = pts.clone()
        pts[:, point] += shift
        return pts, spread

    token.world_points = moved
    try:
        yield
    finally:
        del token.world_points  # back to the class's method


@torch.inference_mode()
def response(policy: RFMPolicy, obs: dict, instruction: str, point: int, delta: float, n: int) -> np.ndarray:
    """(3, D_a): central difference of the first n actions' mean per metre of point motion along x, y, z."""
    batch = make_batch([obs], policy.interface)
    rows = []
    for axis in range(3):
        means = []
        for sign in (1.0, -1.0):
            shift = torch.zeros(3)
            shift[axis] = sign * delta
            with shifted(policy.net.point_token, point, shift):
                means.append(policy.predict(batch.images, batch.state, [instruction])[0, :n].mean(0))
        rows.append((means[0] - means[1]) / (2 * delta))
    return np.array(rows)


def probe(checkpoint: str, tasks: list[str], seeds: int, first_seed: int, k: int, point: int,
          delta: float = 0.02, n: int = 4) -> dict:
    policy = RFMPolicy.from_pretrained(checkpoint)
    if policy.net.point_token is None:
        raise SystemExit(f"{checkpoint}: model.vision_points is 0 (no triangulated points to move)")
    if not 0 <= point < policy.net.point_token.points:
        raise SystemExit(f"--point {point}: the model triangulates points 0..{policy.net.point_token.points - 1}")
    out: dict = {"checkpoint": checkpoint, "steps_done": policy.meta.get("training", {}).get("steps_done"),
                 "seeds": seeds, "first_seed": first_seed, "k": k, "point": point, "delta_m": delta,
                 "first_actions": n, "units": "action per cm", "tasks": {}}
    for task in tasks:
        instruction = instructions_for(task)[0]  # the training instruction, as rfm eval uses
        reads, _, _ = read_scenes(task, policy.interface, seeds, first_seed, k,
                                  lambda obs, text=instruction: response(policy, obs, text, point, delta, n))
        per_cm = reads.mean(0) / 100  # (3 axes, D_a)
        out["tasks"][task] = {f"point_{a}": {name: round(float(v), 4) for name, v in zip(policy.interface.action_names,
                                                                                         per_cm[i])}
                              for i, a in enumerate(AXES)}
    return out


def main() -> int:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--point", type=int, default=2,
                                                          help="which triangulated point to move (2: the goal)"))
    res = probe(args.checkpoint, expand_tasks(args.tasks), args.seeds, args.first_seed, args.k, args.point)
    print(f"{args.checkpoint} (step {res['steps_done']}): point {args.point} moved, mean of the first "
          f"{res['first_actions']} actions, per cm, over {args.seeds} seeds from {args.first_seed} after {args.k} expert steps")
    for task, rows in res["tasks"].items():
        names = list(next(iter(rows.values())))
        print(f"{task:<24} " + " ".join(f"{n:>9}" for n in names))
        for axis, vals in rows.items():
            print(f"  {axis:<22} " + " ".join(f"{v:>+9.4f}" for v in vals.values()))
    append_result(RESULTS, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
