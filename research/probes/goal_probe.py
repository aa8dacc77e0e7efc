"""Does a policy read the goal from its cameras, or from the robot state? An open-loop probe on unseen seeds.

For each seed: the scripted expert drives the arm for k steps (k = 0: the reset pose), then the policy's first
predicted action is compared with the expert's. Per action dimension it reports the correlation across seeds and
the spread of the predictions. Reading the table:
  - high correlation at k > 0 but low (or negative) at k = 0: the policy infers the goal from how far the arm has
    already moved (a copycat shortcut: every demo starts at the same pose), not from the image; closed loop its
    own first motion then points it the wrong way;
  - prediction spread much smaller than the expert's: the policy mostly ignores the goal and averages.

    .venv/bin/python research/probes/goal_probe.py --checkpoint checkpoints/default --task reach-v3 --seeds 20 --k 0,10
Prints a table and writes research/probes/results/goal_probe.json (one entry per checkpoint, appended).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scene_probe import append_result

from rfm.runtime import load_runner
from rfm.sim.metaworld import EVAL_SEED_BASE, MetaWorldEnv

RESULTS = Path(__file__).parent / "results" / "goal_probe.json"


def probe(checkpoint: str, task: str, seeds: int, ks: list[int]) -> dict:
    runner = load_runner(checkpoint)
    itf = runner.interface
    env = MetaWorldEnv(task, itf.cameras, itf.image_size[0])
    out: dict = {"checkpoint": checkpoint, "task": task, "seeds": seeds, "k": {}}
    try:
        for k in ks:
            pred, expert = [], []
            for i in range(seeds):
                obs = env.reset(EVAL_SEED_BASE + i)
                for _ in range(k):
                    obs, *_ = env.step(env.expert_action())
                pred.append(runner.predict(obs)[0])
                expert.append(env.expert_action())
            p, e = np.array(pred), np.array(expert)
            dims = {}
            for d, name in enumerate(itf.action_names):
                ok = p[:, d].std() > 1e-6 and e[:, d].std() > 1e-6
                dims[name] = {"corr": float(np.corrcoef(p[:, d], e[:, d])[0, 1]) if ok else None,
                              "pred_std": float(p[:, d].std()), "expert_std": float(e[:, d].std())}
            out["k"][str(k)] = dims
    finally:
        env.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, action="append", help="repeat to compare checkpoints")
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--k", default="0,10", help="expert steps before the probe, comma-separated")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    ks = [int(v) for v in args.k.split(",")]
    rows = [probe(c, args.task, args.seeds, ks) for c in args.checkpoint]
    print(f"{'checkpoint':<44}{'k':>4}  " + "  ".join(f"{n:>18}" for n in rows[0]["k"][str(ks[0])]))
    for r in rows:
        for k, dims in r["k"].items():
            cells = [f"{(v['corr'] if v['corr'] is not None else float('nan')):+.2f} ({v['pred_std']:.2f}/{v['expert_std']:.2f})"
                     for v in dims.values()]
            print(f"{r['checkpoint'][-44:]:<44}{k:>4}  " + "  ".join(f"{c:>18}" for c in cells))
    print("cells: correlation with the expert (prediction std / expert std), across seeds")
    append_result(Path(args.out), *rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
