"""Is a policy under- or over-fitting? Its action-chunk error on the demos it trained on beside demos it never saw.

Both sets are scored the same way: no augmentation, the checkpoint's (EMA) weights, the mean |error| of the predicted
chunk in normalised action units (what the chunk head's L1 loss measures), per task, for the hand (mean of the
position dimensions) and the gripper (the last dimension), and per chunk step. Held-out episodes that share a task
and seed with a seen one (the same scene) are dropped, so a larger demo set generated from the same seeds can serve
as the held-out set. Near-equal seen and held-out errors mean the model is not memorising: it underfits, and more
training (or capacity) is what lowers both.

    .venv/bin/python research/probes/fit_probe.py --checkpoint runs/X/checkpoint --seen data/mt10-10-128ct-j15-env \
        --held data/mt10-20-128ct-j15-env --every 3
Prints a table and appends to research/probes/results/fit_probe.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scene_probe import append_result
from torch.utils.data import DataLoader, Subset

from rfm.data.reader import LeRobotDataset
from rfm.data.windows import WindowDataset, collate_windows
from rfm.model.policy import RFMPolicy

RESULTS = Path(__file__).parent / "results" / "fit_probe.json"


def scene_key(ep) -> tuple:
    return ep.meta.get("env_task"), ep.meta.get("seed")


@torch.inference_mode()
def chunk_errors(policy: RFMPolicy, ds: LeRobotDataset, episodes: list[int], every: int, batch: int = 32):
    """{instruction: (D_a,) mean |error| over the chunk} and (H,) mean |error| over dims per chunk step."""
    windows = WindowDataset(ds, policy.interface, episodes=episodes)
    loader = DataLoader(Subset(windows, range(0, len(windows), every)), batch_size=batch, collate_fn=collate_windows)
    net = policy.net.eval()
    per_task, steps, counts = defaultdict(list), 0.0, 0.0
    for b in loader:
        text, mask = policy.encode_text(b["instruction"])
        pred = net(b["images"], b["state"].float(), text, mask)
        err = (net.action_norm(pred) - net.action_norm(b["actions"].float())).abs()  # (B, H, D)
        valid = (~b["action_pad"]).float()  # (B, H)
        per_frame = (err * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # (B, D)
        steps = steps + (err.mean(-1) * valid).sum(0)
        counts = counts + valid.sum(0)
        for instruction, row in zip(b["instruction"], per_frame.numpy()):
            per_task[instruction].append(row)
    return {k: np.mean(v, 0) for k, v in per_task.items()}, (steps / counts).numpy()


def probe(checkpoint: str, seen: str, held: str, every: int) -> dict:
    policy = RFMPolicy.from_pretrained(checkpoint)
    seen_ds = LeRobotDataset(seen)
    held_ds = LeRobotDataset(held)
    seen_keys = {scene_key(e) for e in seen_ds.episodes}
    held_eps = [e.index for e in held_ds.episodes if scene_key(e) not in seen_keys]
    if not held_eps:
        raise SystemExit(f"{held}: every episode shares a task and seed with one in {seen}; nothing is held out")
    seen_task, seen_steps = chunk_errors(policy, seen_ds, [e.index for e in seen_ds.episodes], every)
    held_task, held_steps = chunk_errors(policy, held_ds, held_eps, every)
    rows = {}
    for task in seen_task:
        s, h = seen_task[task], held_task.get(task)
        rows[task] = {"seen_hand": round(float(s[:-1].mean()), 4), "seen_gripper": round(float(s[-1]), 4),
                      "held_hand": None if h is None else round(float(h[:-1].mean()), 4),
                      "held_gripper": None if h is None else round(float(h[-1]), 4)}
    return {"checkpoint": checkpoint, "seen": seen, "held": held, "held_episodes": len(held_eps), "every": every,
            "tasks": rows,
            "seen_mean": round(float(np.mean([v.mean() for v in seen_task.values()])), 4),
            "held_mean": round(float(np.mean([v.mean() for v in held_task.values()])), 4),
            "seen_by_chunk_step": [round(float(v), 4) for v in seen_steps],
            "held_by_chunk_step": [round(float(v), 4) for v in held_steps]}


def print_table(r: dict) -> None:
    print(f"\n{r['checkpoint']}: |error| in normalised action units (seen: {r['seen']}; held out: {r['held']}, "
          f"{r['held_episodes']} episodes)")
    print("| task | seen hand | seen gripper | held-out hand | held-out gripper |\n|---|---:|---:|---:|---:|")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    for task, v in r["tasks"].items():
        print(f"| {task} | {fmt(v['seen_hand'])} | {fmt(v['seen_gripper'])} | {fmt(v['held_hand'])} | "
              f"{fmt(v['held_gripper'])} |")
    print(f"| **mean, all dims** | **{r['seen_mean']:.3f}** | | **{r['held_mean']:.3f}** | |")
    print("by chunk step, seen:    ", " ".join(f"{v:.3f}" for v in r["seen_by_chunk_step"]))
    print("by chunk step, held out:", " ".join(f"{v:.3f}" for v in r["held_by_chunk_step"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--seen", required=True, help="the dataset the checkpoints trained on (or a part of it)")
    ap.add_argument("--held", required=True, help="a dataset of the same tasks; its scenes also in --seen are dropped")
    ap.add_argument("--every", type=int, default=3, help="score every k-th frame")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [probe(c, args.seen, args.held, args.every) for c in args.checkpoint]
    for r in results:
        print_table(r)
    append_result(RESULTS, *results)


if __name__ == "__main__":
    main()
