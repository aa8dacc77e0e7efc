"""`rfm eval`: closed-loop success rates of a checkpoint (or ONNX export) in simulation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rfm.cli.main import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="closed-loop evaluation in simulation (success rate per task)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (torch) or export dir (onnx)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--env", default="metaworld", choices=["metaworld"])
    p.add_argument("--tasks", default="mt10", help="comma-separated tasks, or mt10")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task")
    p.add_argument("--paraphrase", action="store_true", help="use instructions never seen in training")
    p.add_argument("--ensemble", action="store_true", help="ACT temporal ensembling (predict every step)")
    p.add_argument("--ensemble-m", type=float, default=0.01)
    p.add_argument("--action-steps", type=int, default=None, help="actions executed per chunk (default: all)")
    p.add_argument("--snap-instructions", type=float, default=None, metavar="SIM",
                   help="map instructions the model never trained on to the nearest trained one at cosine "
                        "similarity >= SIM (what `rfm serve --snap-instructions` does); the JSON lists each mapping")
    p.add_argument("--seed", type=int, default=None, help="first evaluation seed (>= 1000000)")
    p.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: 500)")
    p.add_argument("--video-dir", default=None, help="write a GIF of the first episode per task here")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, each with its own runner")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--update-card", action="store_true",
                   help="record the results in the checkpoint's config.json meta and model card")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.eval import evaluate, format_table

    if args.episodes < 1:
        raise CLIError(f"--episodes {args.episodes}: expected >= 1")
    if not Path(args.checkpoint).is_dir():
        raise CLIError(f"{args.checkpoint}: checkpoint directory not found")
    if args.update_card and args.backend != "torch":  # said before the rollouts, not after half an hour of them
        raise CLIError("--update-card needs --backend torch (a checkpoint directory)")
    results = evaluate(None, args.tasks, args.episodes, seed=args.seed, paraphrase=args.paraphrase,
                       ensemble=args.ensemble, ensemble_m=args.ensemble_m, action_steps=args.action_steps,
                       max_steps=args.max_steps, video_dir=args.video_dir, workers=args.workers,
                       checkpoint=args.checkpoint, backend=args.backend, progress=not args.no_progress,
                       snap_instructions=args.snap_instructions)
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    if args.update_card:
        from rfm.eval.card import CardError, record_in_card

        try:
            key = record_in_card(args.checkpoint, results)
        except CardError as e:  # e.g. the weights were replaced while the rollouts ran
            raise CLIError(str(e)) from e
        print(f"recorded as {key!r} in {args.checkpoint}/config.json and README.md")
    return 0
