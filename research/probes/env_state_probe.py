"""How well does a policy's encoder know where the objects and the goal are? Reads its environment-state head.

Only checkpoints trained with `rfm train --env-state-loss` have the head. For each task and unseen evaluation seed,
the scene is reset (and optionally the expert drives k steps), the head predicts object 1 and goal positions from
the camera tokens alone (it never sees the robot state), and the error is compared with the simulator's truth. The
baseline is the error of always answering the task's mean position over the same seeds (knowing the task but not
where things are this time): an error near the baseline means the encoder does not localise that thing; near 0,
it does.

    .venv/bin/python research/probes/env_state_probe.py --checkpoint runs/X/checkpoint --tasks mt10 --seeds 20
Prints a table (mean absolute error in cm per axis) and writes research/probes/results/env_state_probe.json (appended).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scene_probe import append_result, parse_args, read_scenes

from rfm.model.policy import RFMPolicy
from rfm.runtime.observation import make_batch
from rfm.sim.metaworld import ENV_STATE_NAMES, EVAL_SEED_BASE, expand_tasks

RESULTS = Path(__file__).parent / "results" / "env_state_probe.json"
GROUPS = {"obj1": slice(0, 3), "goal": slice(6, 9)}  # obj2 is unused by the MT10 tasks (always zero)


@torch.inference_mode()
def predict_env_state(policy: RFMPolicy, obs: dict) -> np.ndarray:
    """(D_env,) environment state in simulator units, from one runtime observation."""
    net = policy.net.eval()
    images = torch.from_numpy(make_batch([obs], policy.interface).images)
    return net.env_norm.inverse(net.predict_env_state(net.image_tokens(images)))[0].numpy()


def probe(checkpoint: str, tasks: list[str], seeds: int, first_seed: int = EVAL_SEED_BASE, k: int = 0) -> dict:
    policy = RFMPolicy.from_pretrained(checkpoint)
    if not policy.net.env_state_dim:
        raise SystemExit(f"{checkpoint}: no environment-state head (train with --env-state-loss)")
    itf = policy.interface
    out: dict = {"checkpoint": checkpoint, "seeds": seeds, "first_seed": first_seed, "k": k, "tasks": {}}
    for task in tasks:
        p, t, _ = read_scenes(task, itf, seeds, first_seed, k, lambda obs: predict_env_state(policy, obs))
        row = {}
        for group, sl in GROUPS.items():
            err = np.abs(p[:, sl] - t[:, sl]).mean(0) * 100  # cm
            base = np.abs(t[:, sl].mean(0) - t[:, sl]).mean(0) * 100
            row[group] = {"mae_cm": [round(float(v), 2) for v in err], "baseline_cm": [round(float(v), 2) for v in base],
                          "axes": ENV_STATE_NAMES[sl]}
        out["tasks"][task] = row
    return out


def main() -> int:
    args = parse_args(__doc__)
    res = probe(args.checkpoint, expand_tasks(args.tasks), args.seeds, args.first_seed, args.k)
    print(f"{args.checkpoint}: mean |error| in cm over {args.seeds} seeds from {args.first_seed} after {args.k} expert steps "
          f"(baseline: the task's mean position)")
    print(f"{'task':<26} {'obj1 x/y/z':>20} {'baseline':>20} {'goal x/y/z':>20} {'baseline':>20}")
    for task, row in res["tasks"].items():
        cells = ["/".join(f"{v:.1f}" for v in row[g][k]) for g in GROUPS for k in ("mae_cm", "baseline_cm")]
        print(f"{task:<26} " + " ".join(f"{c:>20}" for c in cells))
    append_result(RESULTS, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
