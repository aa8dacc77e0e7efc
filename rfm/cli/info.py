"""`rfm info`: parameters and FLOPs per chunk of a preset or a checkpoint."""

from __future__ import annotations

import argparse
import json

from rfm.cli.args import checkpoint_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and FLOPs per chunk of a preset or checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="tiny | small | base (default: small)")
    g.add_argument("--checkpoint", default=None, type=checkpoint_dir, help="a checkpoint directory")
    p.add_argument("--head", default="chunk", choices=["chunk", "flow"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.model.flops import count_flops, describe_preset

    if args.checkpoint:
        from rfm.model.policy import RFMPolicy

        policy = RFMPolicy.from_pretrained(args.checkpoint)
        flops = count_flops(policy)
        info = {"checkpoint": args.checkpoint, "preset": policy.model_config.preset, "head": policy.model_config.head,
                "params": policy.num_parameters(), "flops_per_chunk": flops["policy"],
                "text_encoder_flops": flops["text_encoder"], **policy.interface.to_dict(),
                "model_version": policy.meta.get("model_version")}
    else:
        info = describe_preset(args.preset or "small", head=args.head)
        info.pop("config")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k in ("params", "text_encoder_params"):
            v = f"{v:,} ({v / 1e6:.2f} M)"
        elif "flops" in k:
            v = f"{v:,} ({v / 1e9:.2f} GFLOPs)"
        print(f"{k:<{width}}  {v}")
    return 0
