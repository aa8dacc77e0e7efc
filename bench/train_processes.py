"""Training on a CPU: one process with N threads against N processes of one thread (torchrun, gloo), same recipe.

    python bench/train_processes.py [--dataset DIR] [--steps 120] [--batch 8] [--procs 2] [--rounds 1]

Runs `rfm train --init checkpoints/default` (the fine-tune a user runs) in each configuration, back to back, `rounds`
times in alternation, and reads each run's own log: samples/s (median of the log windows after the first) and the
wall time of the steps. Without --dataset it first generates 2 Meta-World tasks x 3 scripted episodes at the default
cameras' size. Prints a table, writes bench/results/train_processes.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rfm_train(out: Path, procs: int, threads: int, batch: int, args: argparse.Namespace) -> dict:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
              if procs > 1 else [sys.executable])
    cmd = [*launch, "-m", "rfm.cli.main", "train", "--dataset", args.dataset, "--init", args.init, "--steps",
           str(args.steps), "--batch-size", str(batch), "--threads", str(threads), "--num-workers", "1",
           "--log-every", str(args.log_every), "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert meta["processes"] == procs, meta
    steps_s = float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"])
    return {"processes": procs, "threads_each": threads, "batch_each": batch, "samples_per_step": batch * procs,
            "samples_per_s": statistics.median(float(r["samples_per_s"]) for r in rows[1:]),
            "steps_timed": int(rows[-1]["step"]) - int(rows[0]["step"]), "seconds": round(steps_s, 2)}


def generate(root: Path) -> str:
    out = root / "demos"
    subprocess.run([sys.executable, "-m", "rfm.cli.main", "data", "generate", "metaworld", "--tasks",
                    "reach-v3,push-v3", "--episodes", "3", "--out", str(out), "--workers", "1"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", help="a LeRobot dataset (default: generated Meta-World demos)")
    ap.add_argument("--init", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="samples per step of the one-process run")
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_processes.json"))
    args = ap.parse_args()
    n = args.procs
    configs = [(1, n, args.batch), (n, 1, args.batch // n), (n, 1, args.batch)]  # same step, then same batch each
    given = args.dataset
    with tempfile.TemporaryDirectory() as tmp:
        args.dataset = given or generate(Path(tmp))
        results = []
        for r in range(args.rounds):
            for i, (procs, threads, batch) in enumerate(configs):
                res = rfm_train(Path(tmp) / f"run-{r}-{i}", procs, threads, batch, args)
                results.append({"round": r, **res})
    base = statistics.median(x["samples_per_s"] for x in results if x["processes"] == 1)
    print(f"{'processes x threads':>20} {'batch each':>10} {'per step':>8} {'samples/s':>10} {'vs 1 process':>12}")
    for x in results:
        x["vs_one_process"] = round(x["samples_per_s"] / base, 2)
        print(f"{x['processes']:>10} x {x['threads_each']:<7} {x['batch_each']:>10} {x['samples_per_step']:>8} "
              f"{x['samples_per_s']:>10.1f} {x['vs_one_process']:>11.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                               "dataset": given or "generated: reach-v3, push-v3 x 3 episodes",
                               "init": args.init, "steps": args.steps, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
