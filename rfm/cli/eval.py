"""`rfm eval`: closed-loop success rates of a checkpoint (or ONNX export) in simulation, or with --dataset the
open-loop action error on recorded episodes of a real dataset (rfm.eval.offline), no simulator needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rfm.cli.args import checkpoint_dir, ints, positive_int
from rfm.cli.errors import CLIError
from rfm.constants import BACKENDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="closed-loop evaluation in simulation (success rate per task); with --dataset, "
                                    "open-loop action error on a recorded dataset")
    p.add_argument("--checkpoint", required=True, type=checkpoint_dir, help="checkpoint dir (torch) or export dir (onnx, openvino)")
    p.add_argument("--backend", default=None, choices=list(BACKENDS),
                   help="torch: a checkpoint dir; onnx: an export dir; openvino: an export dir with an OpenVINO IR "
                        "(rfm export --target openvino); default: the one the directory is for")
    p.add_argument("--env", default="metaworld", choices=["metaworld"])
    p.add_argument("--tasks", default="mt10", help="comma-separated tasks, or a set: mt10, mt50, base38, ml45-test")
    p.add_argument("--episodes", default=None,
                   help="episodes per task (default 50); with --dataset, the episode indices, e.g. 0,3,5 (default: "
                        "those the checkpoint's training held out of it, else all)")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help="offline: compare each frame's predicted chunk with the recorded actions of this LeRobot "
                        "dataset (same robot as the checkpoint)")
    p.add_argument("--last", type=int, default=None, metavar="N", help="with --dataset: its last N episodes")
    p.add_argument("--stride", type=int, default=1, metavar="K", help="with --dataset: every K-th frame")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --dataset: predicted vs recorded actions of the worst and a typical episode")
    p.add_argument("--paraphrase", action="store_true", help="use instructions never seen in training")
    p.add_argument("--ensemble", action="store_true", help="ACT temporal ensembling (predict every step)")
    p.add_argument("--ensemble-m", type=float, default=0.01)
    p.add_argument("--action-steps", type=int, default=None, help="actions executed per chunk (default: all)")
    p.add_argument("--delay", type=int, default=0, metavar="D",
                   help="simulated inference delay in control ticks: a chunk is usable D ticks after its observation, "
                        "the robot executing the previous one meanwhile (default 0)")
    p.add_argument("--continuation", action="store_true",
                   help="delay-aware continuation: each request carries the actions the robot executes until its "
                        "answer is usable (--delay ticks), and the model continues them (needs model.prefix_max > 0)")
    p.add_argument("--snap-instructions", type=float, default=None, metavar="SIM",
                   help="map instructions the model never trained on to the nearest trained one at cosine "
                        "similarity >= SIM (what `rfm serve --snap-instructions` does); the JSON lists each mapping")
    p.add_argument("--seed", type=int, default=None, help="first evaluation seed (>= 1000000)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="episode step limit (default: 500)")
    p.add_argument("--video-dir", default=None, help="write a GIF of the first episode per task here")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes, each with its own runner")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--update-card", action="store_true",
                   help="record the results in the checkpoint's config.json meta and model card")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


# simulation-only options and their defaults: given with --dataset, they would silently do nothing
SIM_ONLY = {"tasks": "mt10", "paraphrase": False, "ensemble": False, "action_steps": None, "delay": 0,
            "continuation": False,
            "snap_instructions": None,
            "seed": None, "max_steps": None, "video_dir": None, "workers": 1}


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return ints(text)
    except argparse.ArgumentTypeError as e:
        raise CLIError(f"{flag} {text!r}: expected comma-separated episode indices, e.g. 0,3,5") from e


def run(args: argparse.Namespace) -> int:
    from rfm.eval import evaluate, format_table
    from rfm.runtime.loader import resolve_backend

    if Path(args.checkpoint).is_dir():  # else the command names the missing directory below
        args.backend = resolve_backend(args.checkpoint, args.backend)
    args.backend = args.backend or "torch"
    if args.dataset is not None:
        return run_offline(args)
    given = [f"--{k}" for k in ("last", "plot") if getattr(args, k) is not None]
    given += ["--stride"] if args.stride != 1 else []
    if given:
        raise CLIError(f"{', '.join(given)}: only with --dataset")
    try:
        args.episodes = 50 if args.episodes is None else int(args.episodes)
    except ValueError as e:
        raise CLIError(f"--episodes {args.episodes!r}: expected a number of episodes per task") from e
    if args.episodes < 1:
        raise CLIError(f"--episodes {args.episodes}: expected >= 1")
    _check_checkpoint(args)
    results = evaluate(None, args.tasks, args.episodes, seed=args.seed, paraphrase=args.paraphrase,
                       ensemble=args.ensemble, ensemble_m=args.ensemble_m, action_steps=args.action_steps,
                       max_steps=args.max_steps, video_dir=args.video_dir, workers=args.workers,
                       checkpoint=args.checkpoint, backend=args.backend, progress=not args.no_progress,
                       snap_instructions=args.snap_instructions, delay=args.delay, continuation=args.continuation)
    print(format_table(results))
    if args.out:
        _write(args.out, results)
    if args.update_card:
        _record(args.checkpoint, results)
    return 0


def run_offline(args: argparse.Namespace) -> int:
    """rfm eval --dataset: open-loop errors of the checkpoint's chunks against the recorded actions."""
    from rfm.eval.offline import format_offline, offline_eval

    given = [f"--{k.replace('_', '-')}" for k, v in SIM_ONLY.items() if getattr(args, k) != v]
    if given:
        raise CLIError(f"{', '.join(given)}: simulation only, not with --dataset")
    if not Path(args.dataset).is_dir():
        raise CLIError(f"{args.dataset}: dataset directory not found")
    _check_checkpoint(args)
    if args.stride < 1:
        raise CLIError(f"--stride {args.stride}: expected >= 1")
    if args.episodes is not None and args.last is not None:
        raise CLIError("--episodes and --last: give one of them")
    episodes = _int_list(args.episodes, "--episodes") if args.episodes is not None else None
    results, preds = offline_eval(args.checkpoint, args.dataset, episodes=episodes, last=args.last,
                                  stride=args.stride, backend=args.backend, progress=not args.no_progress)
    print(format_offline(results))
    if args.out:
        _write(args.out, results)
    if args.plot:
        from rfm.eval.offline_plot import plot_offline

        print(f"wrote {plot_offline(preds, results, args.plot)}")
    if args.update_card:
        _record(args.checkpoint, results)
    return 0


def _check_checkpoint(args: argparse.Namespace) -> None:
    """Before any rollout or prediction, not after half an hour of them."""
    if not Path(args.checkpoint).is_dir():
        raise CLIError(f"{args.checkpoint}: checkpoint directory not found")
    if args.update_card and args.backend != "torch":
        raise CLIError("--update-card needs --backend torch (a checkpoint directory)")
    if args.continuation and args.ensemble:
        raise CLIError("--continuation and --ensemble are two ways to switch chunks: give one")
    k, d = args.action_steps, args.delay
    if not (d or args.continuation or k is not None):
        return
    chunk, prefix_max = _chunk_and_prefix(args)
    if k is not None:
        from rfm.runtime.execution import check_action_steps

        try:
            check_action_steps(k, chunk, "--action-steps")
        except ValueError as e:
            raise CLIError(f"{e} of {args.checkpoint}") from None
    from rfm.runtime.execution import delay_note

    note = delay_note(k, d, chunk)  # a delay that is not simulated as one would guess
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.continuation and prefix_max < 1:
        raise CLIError(f"--continuation: {args.checkpoint} takes no committed actions (model.prefix_max = 0); "
                       f"fine-tune it for delay-aware continuation with --model prefix_max=8")


def _chunk_and_prefix(args: argparse.Namespace) -> tuple[int, int]:
    """(interface.chunk_size, model.prefix_max) of the checkpoint (--backend torch) or export (onnx, openvino) to
    evaluate."""
    from rfm.runtime.loader import read_interface

    interface, prefix_max = read_interface(args.checkpoint, export=args.backend != "torch")
    return interface.chunk_size, prefix_max


def _write(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def _record(checkpoint: str, results: dict) -> None:
    from rfm.eval.card import CardError, record_in_card

    try:
        key = record_in_card(checkpoint, results)
    except CardError as e:  # e.g. the weights were replaced while the evaluation ran
        raise CLIError(str(e)) from e
    print(f"recorded as {key!r} in {checkpoint}/config.json and README.md")
