"""`rfm card`: a checkpoint's recorded evaluations and execution mode; records saved `rfm eval --out` results and
the actions per request a robot should run (rfm.runtime.execution)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rfm.cli.errors import CLIError, require_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="show a checkpoint's recorded evaluations; --add records saved eval results")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--add", nargs="+", default=[], metavar="RESULTS",
                   help="`rfm eval --out` JSON files to record (each must have been measured on these weights)")
    p.add_argument("--action-steps", metavar="K|none",
                   help="record that robots should run K actions of each chunk per request (the SDK's ChunkExecutor "
                        "then asks when H - K remain), for every instruction; 'none' removes the recommendation")
    p.set_defaults(func=run)


def _load_results(path: str) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise CLIError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise CLIError(f"{path}: not JSON ({e})") from e
    offline = ("dataset", "mae", "nmae", "mean_nmae")  # `rfm eval --dataset --out`
    for field in offline if results.get("kind") == "offline" else ("tasks", "mean_success_rate", "seeds"):
        if field not in results:
            raise CLIError(f"{path}: no {field!r} field; expected the JSON `rfm eval --out` writes")
    return results


def _execution(checkpoint: str, value: str) -> dict | None:
    """--action-steps K|none -> the card's execution entry (None removes it); a CLI error for a bad K."""
    from rfm.checkpoint import read_config
    from rfm.runtime.execution import check_action_steps

    if value.strip().lower() == "none":
        return None
    chunk = read_config(checkpoint)[0].interface.chunk_size
    try:
        k = check_action_steps(int(value) if value.strip().lstrip("-").isdigit() else value, chunk, "--action-steps")
    except ValueError as e:
        raise CLIError(f"{checkpoint}: {e}") from e
    return {"action_steps": k, "by_instruction": {}, "source": "rfm card --action-steps"}


def _print_execution(execution: dict | None) -> None:
    if not execution:
        print("execution: no recommendation (the SDK asks for the next chunk when half of one remains)")
        return
    by = execution.get("by_instruction") or {}
    print(f"execution: {execution['action_steps']} actions per request" + (
        "; " + ", ".join(f"{k} for {i!r}" for i, k in by.items()) if by else "")
        + (f" ({execution['source']})" if execution.get("source") else ""))


def run(args: argparse.Namespace) -> int:
    from rfm.checkpoint import read_config, update_meta
    from rfm.eval.card import CardError, check_same_weights, record_in_card

    require_checkpoint(args.checkpoint)
    loaded = [(path, _load_results(path)) for path in args.add]
    execution = _execution(args.checkpoint, args.action_steps) if args.action_steps is not None else None
    try:
        for path, results in loaded:  # every file read and tied to these weights before any is written
            check_same_weights(args.checkpoint, results, source=path)
        for path, results in loaded:
            print(f"recorded {path} as {record_in_card(args.checkpoint, results, source=path)!r}")
    except CardError as e:
        raise CLIError(str(e)) from e
    if args.action_steps is not None:
        update_meta(args.checkpoint, "execution", execution)
    meta = read_config(args.checkpoint)[1].get("meta", {})
    _print_execution(meta.get("execution"))
    evals = meta.get("evaluation", {})
    if not evals:
        print(f"{args.checkpoint}: no evaluations recorded (rfm eval --update-card, or rfm card --add)")
    for key, e in evals.items():
        if e.get("kind") == "offline":
            nmae = "-" if e["mean_nmae"] is None else f"{e['mean_nmae']:.3f}"
            print(f"{key:<40}nMAE {nmae}  {e['frames']} frames of {len(e['episodes'])} episodes (offline)")
            continue
        print(f"{key:<40}{e['mean_success_rate'] * 100:6.1f}%  {e['episodes_per_task']} episodes x "
              f"{len(e['tasks'])} tasks, seeds from {e['seed']}")
    return 0
