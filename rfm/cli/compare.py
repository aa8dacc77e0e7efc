"""`rfm compare`: two evaluation results side by side, paired by seed, with how likely the difference is noise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired comparison of two `rfm eval --out` results (per task, McNemar p)")
    p.add_argument("a", help="results JSON A (the baseline); A1.json,A2.json pools seed blocks of one model; "
                   "RUN1.json+RUN2.json pools training runs of one recipe, paired in order with B's")
    p.add_argument("b", help="results JSON B (the change); B1.json,B2.json pools seed blocks of one model; "
                   "RUN1.json+RUN2.json pools training runs")
    p.add_argument("--out", default=None, help="write the comparison JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.eval.compare import compare, format_comparison

    cmp = compare(args.a, args.b)
    print(format_comparison(cmp))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(cmp.to_dict(), indent=2))
        print(f"wrote {args.out}")
    return 0
