"""`rfm average`: a weighted average of checkpoints' weights ("model soup"), written as a new checkpoint."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("average", help="average the weights of checkpoints of one architecture (model soup)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories, e.g. a fine-tune and its --init")
    p.add_argument("--out", required=True, help="checkpoint directory to write (replaced atomically)")
    p.add_argument("--weights", default=None,
                   help="comma-separated weight per checkpoint, normalised to sum 1 (default: equal)")
    p.add_argument("--weights-dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="dtype of the written weights (default: the first checkpoint's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.checkpoint import read_config
    from rfm.train.average import average_checkpoints, parse_weights

    weights = parse_weights(args.weights, len(args.checkpoints))
    policy = average_checkpoints(args.checkpoints, weights)
    dtype = args.weights_dtype or read_config(args.checkpoints[0])[1].get("weights_dtype", "float32")
    policy.save_pretrained(args.out, weights_dtype=dtype)
    parts = ", ".join(f"{w:.3g} x {c}" for w, c in zip(weights, args.checkpoints))
    print(f"wrote {args.out}: {parts} (version {policy.meta['model_version']})")
    return 0
