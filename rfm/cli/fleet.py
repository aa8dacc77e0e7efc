"""`rfm fleet`: drive simulated Meta-World robots against a running server (optionally DAgger-labelled)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rfm.cli.args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="simulated robots acting through a running rfm server (for recording/demos)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--tasks", default="mt10", help="comma-separated Meta-World tasks, or a set: mt10, mt50, base38, ml45-test")
    p.add_argument("--episodes", type=positive_int, default=5, help="episodes per task")
    p.add_argument("--robots", type=positive_int, default=2, help="concurrent robots")
    p.add_argument("--dagger", action="store_true", help="send the scripted expert's action as a correction")
    p.add_argument("--takeover-error", type=float, default=None, metavar="E",
                   help="with --dagger: the expert takes the controls when the policy's action differs from its own "
                        "by more than E in any dimension (HG-DAgger), so the recording holds the expert's own "
                        "plans from the states the policy reached; E < 1 also catches a gripper closed where the "
                        "expert keeps it open (Meta-World pick-place: +1 against 0)")
    p.add_argument("--takeover-steps", type=int, default=16, help="steps the expert keeps the controls (default: 16)")
    p.add_argument("--action-steps", type=int, default=1, metavar="K",
                   help="actions each robot executes per request, waiting for the next chunk (default 1: every tick)")
    p.add_argument("--delay", type=int, default=0, metavar="D",
                   help="simulated inference delay in control ticks (with --action-steps): a chunk is usable D ticks "
                        "after its observation, the robot executing the previous one meanwhile")
    p.add_argument("--continuation", action="store_true",
                   help="delay-aware continuation: each request carries the actions committed for the --delay ticks "
                        "(the served model needs model.prefix_max > 0)")
    p.add_argument("--seed", type=int, default=200_000)
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--api-key-file", default=None, help="file whose first line is the API key")
    p.add_argument("--transport", choices=("http", "ws"), default="http",
                   help="how each robot asks for chunks: POST /v1/act, or one /v1/ws WebSocket (lower latency)")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.cli.main import CLIError
    from rfm.sim.fleet import Takeover, drive_fleet

    if args.takeover_error is not None and not args.dagger:
        raise CLIError("--takeover-error needs --dagger (the expert's action is what a takeover executes)")
    if args.delay < 0:
        raise CLIError(f"--delay {args.delay}: expected a number of control ticks >= 0")
    takeover = Takeover(args.takeover_error, args.takeover_steps) if args.takeover_error is not None else None
    key = _read_key(args.api_key_file) if args.api_key_file else None
    from rfm.client import RFMClient

    try:  # one clear line when the server is not there, before any robot starts
        with RFMClient(args.url, api_key=key) as client:
            described = client.models()
    except Exception as e:  # any failure to reach the server is the user's to fix
        raise CLIError(f"--url {args.url}: cannot read the served model ({type(e).__name__}: {e}); start one with "
                       f"`rfm serve` or pass its address") from e
    chunk = described.get("chunk_size")
    if chunk and not 1 <= args.action_steps <= int(chunk):
        raise CLIError(f"--action-steps {args.action_steps}: expected 1 to the served model's chunk of {chunk} actions")
    if chunk:
        from rfm.runtime.execution import delay_note

        note = delay_note(args.action_steps, args.delay, int(chunk))
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.continuation and not described.get("prefix_max", 0):
        raise CLIError(f"--continuation: the model served at {args.url} takes no committed actions "
                       f"(model.prefix_max = 0)")
    from rfm.sim.metaworld import expand_tasks

    episodes = len(expand_tasks(args.tasks)) * args.episodes
    if args.robots > episodes:  # each robot runs whole episodes
        print(f"note: {args.robots} robots for {episodes} episodes: {args.robots - episodes} of them have nothing to "
              f"do", file=sys.stderr)
    res = drive_fleet(args.url, args.tasks, args.episodes, robots=args.robots, dagger=args.dagger, seed=args.seed,
                      action_steps=args.action_steps, delay=args.delay, continuation=args.continuation,
                      max_steps=args.max_steps, api_key=key, takeover=takeover, transport=args.transport)
    for task, r in res["tasks"].items():
        helped = f", expert drove {r['expert_share'] * 100:.0f}% of steps" if takeover else ""
        print(f"{task:<26}{r['success_rate'] * 100:>6.0f}%  ({r['episodes']} episodes{helped})")
    print(f"{'mean':<26}{res['mean_success_rate'] * 100:>6.1f}%  {res['steps']} steps in {res['wall_time_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


def _read_key(path: str) -> str:
    """The API key: the first word of the file's first line."""
    from rfm.cli.main import CLIError

    try:
        words = Path(path).read_text().split()
    except OSError as e:
        raise CLIError(f"--api-key-file {path}: {e.strerror or e}") from e
    if not words:
        raise CLIError(f"--api-key-file {path}: the file is empty (its first line must be the API key)")
    return words[0]
