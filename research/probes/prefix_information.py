"""Does a continuation fleet's committed prefix tell a policy anything its frames do not? For random ticks of a
recording (`rfm serve --record` of a fleet with `--dagger`, delay and continuation), the mean |difference| per action
dimension over the next 8 ticks between what the robot executed (`action_executed`), the policy's own plan from that
tick's frames without committed actions, and the expert's labels (`action`).

    .venv/bin/python research/probes/prefix_information.py --recording RECORDING --checkpoint CHECKPOINT
Prints the three rows and writes research/probes/results/prefix_information.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rfm.constants import ACTION_EXECUTED
from rfm.data.reader import LeRobotDataset
from rfm.runtime.loader import load_runner

OUT = Path(__file__).resolve().parent / "results" / "prefix_information.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recording", required=True)
    ap.add_argument("--checkpoint", required=True, help="the policy the fleet ran")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--ticks", type=int, default=5, help="ticks per episode")
    ap.add_argument("--horizon", type=int, default=8)
    args = ap.parse_args()
    ds = LeRobotDataset(args.recording)
    runner = load_runner(args.checkpoint, "torch", device="cpu")
    executed, labels = ds.extras[ACTION_EXECUTED].reshape(len(ds.actions), -1), ds.actions
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {"executed vs plan": [], "executed vs label": [], "plan vs label": []}
    h = args.horizon
    for e in rng.choice(len(ds.episodes), min(args.episodes, len(ds.episodes)), replace=False):
        ep = ds.episode(ds.episodes[int(e)].index)
        if ep.length < 2 * h:
            continue
        frames = {c: ds.decode_episode(ep.index, c) for c in ds.cameras}
        for t in rng.choice(ep.length - h, args.ticks, replace=False):
            g = ep.start + int(t)
            obs = {"images": {c: frames[c][t] for c in ds.cameras}, "state": ds.states[g],
                   "instruction": ds.instruction(g)}
            plan, ex, lab = runner.predict(obs)[:h], executed[g:g + h], labels[g:g + h]
            rows["executed vs plan"].append(np.abs(ex - plan).mean(0))
            rows["executed vs label"].append(np.abs(ex - lab).mean(0))
            rows["plan vs label"].append(np.abs(plan - lab).mean(0))
    result = {"recording": args.recording, "checkpoint": args.checkpoint, "horizon": h,
              "ticks": len(rows["plan vs label"]), "action_names": runner.interface.action_names,
              "mean_abs_difference": {k: [round(float(x), 3) for x in np.mean(v, 0)] for k, v in rows.items()}}
    print(f"{result['ticks']} ticks, next {h} actions, mean |difference| per {runner.interface.action_names}:")
    for k, v in result["mean_abs_difference"].items():
        print(f"  {k:<18} {v}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
