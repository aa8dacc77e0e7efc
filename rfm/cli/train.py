"""`rfm train`: fine-tune a policy on a LeRobot dataset (CPU, one GPU, or `accelerate launch` for many)."""

from __future__ import annotations

import argparse
import json

from rfm.cli.main import CLIError
from rfm.train.config import BALANCE_MODES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a policy on a LeRobot dataset",
                       description="Train a policy. Multi-GPU/multi-node: `accelerate launch -m rfm.cli.main train ...`.")
    p.add_argument("--dataset", required=True,
                   help="LeRobot v3.0/v2.1 dataset directory; comma-separate several to train on them together "
                        "(e.g. the original demos plus fleet recordings)")
    p.add_argument("--out", required=True, help="run directory (checkpoint/, logs/)")
    p.add_argument("--preset", default=None, help="tiny | small | base (default: the --init model, else small)")
    p.add_argument("--head", default=None, choices=["chunk", "flow"], help="default: the --init head, else chunk")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.999, help="0 disables EMA")
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--cameras", default=None, help="comma-separated camera names (default: all)")
    p.add_argument("--no-augment", action="store_true", help="disable random shift and colour jitter")
    p.add_argument("--shift-pad", type=int, default=6, help="random-shift augmentation, pixels at model resolution")
    p.add_argument("--color-jitter", type=float, default=0.2, help="max relative brightness/contrast change")
    p.add_argument("--state-noise", type=float, default=0.0,
                   help="Gaussian noise on the robot state while training, in dataset stds (e.g. 0.5): makes the "
                        "policy read goals from the cameras instead of from how far the arm has moved")
    p.add_argument("--scene-shift", type=float, default=0.0, metavar="METRES",
                   help="move the robot's position (state dims <name>_x/_y/_z) and the triangulated points "
                        "(model.vision_points) by one random offset per sample, up to METRES per axis: keeps the "
                        "offsets between hand and goal, hides absolute positions; 0 = off. Measured at 10 demos "
                        "per MT10 task (0.1): reach follows the goal closer open loop, 3 points worse closed loop "
                        "(docs/RESULTS.md, session 19)")
    p.add_argument("--env-state-loss", type=float, default=0.0, metavar="W",
                   help="weight of an auxiliary loss predicting observation.environment_state (simulated demos "
                        "record object and goal positions): teaches the encoder to find them; 0 = off")
    p.add_argument("--keypoint-loss", type=float, default=0.0, metavar="W",
                   help="weight of an auxiliary loss putting spatial-softmax keypoint p on point p of "
                        "observation.environment_state (object 1, object 2, goal) in every camera, through the "
                        "camera projections simulated demos record: teaches the encoder to find them; 0 = off")
    p.add_argument("--action-loss-weights", default=None, metavar="NAME=W,...",
                   help="weight of named action dimensions in the action loss, the rest 1 (e.g. gripper=4: a "
                        "gripper's open/close is one of several dimensions, but a wrong one drops the object)")
    p.add_argument("--relabel-action", action="append", default=None, metavar="NAME:OLD=NEW[@TASK]",
                   help="map an exact action value before training, in memory (repeatable; e.g. gripper:0=-1 turns "
                        "Meta-World pick-place's slow 'no grip' label into an open command); stats follow. @TASK "
                        "limits it to one task: a task string as stored, or a Meta-World name (@pick-place-v3)")
    p.add_argument("--instruction-variants", default=None, metavar="FILE|metaworld",
                   help="instruction augmentation: JSON {instruction: [variants]}, or 'metaworld' for the built-in "
                        "variants of the Meta-World instructions (never the evaluation paraphrases)")
    p.add_argument("--variant-prob", type=float, default=0.5,
                   help="chance that a sample's instruction is replaced by one of its variants")
    p.add_argument("--balance", default="none", choices=list(BALANCE_MODES),
                   help="tasks: each task gets the same share of samples (short tasks are not drowned out)")
    p.add_argument("--dataset-weights", default=None, metavar="W1,W2,...",
                   help="share of samples from each --dataset, in order (normalised; e.g. 0.7,0.3 for demos and a "
                        "fleet recording); default: in proportion to their frames")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--frame-cache-gb", type=float, default=4.0,
                   help="decoded-frame cache (GiB), shared out among the DataLoader workers (each keeps its own); "
                        "frames that do not fit are decoded again. Size it to hold the data set once per worker: 50 demos "
                        "per task of MT10 at 2 x 128 px decode to 3.6 GiB")
    p.add_argument("--val-episodes", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="checkpoint to fine-tune from (new robots: mismatched layers re-init)")
    p.add_argument("--keep-init-stats", action="store_true",
                   help="normalise with the --init checkpoint's stats instead of this dataset's (same robot)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank for a pretrained HF vision backbone")
    p.add_argument("--weights-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--model", default=None, help='JSON of model config overrides, e.g. \'{"dim": 192}\'')
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; lower it when other jobs share the cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rfm.train.config import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    from rfm.train.loop import train

    try:
        overrides = json.loads(args.model) if args.model else {}
    except json.JSONDecodeError as e:
        raise CLIError(f"--model is not valid JSON: {e}") from e
    try:
        dataset_weights = [float(w) for w in args.dataset_weights.split(",")] if args.dataset_weights else None
    except ValueError as e:
        raise CLIError(f"--dataset-weights {args.dataset_weights!r}: expected comma-separated numbers ({e})") from e
    action_weights = _named_weights(args.action_loss_weights) if args.action_loss_weights else None
    cfg = TrainConfig(
        dataset=args.dataset, out=args.out, preset=args.preset, head=args.head, model_overrides=overrides,
        chunk_size=args.chunk_size, image_size=tuple(args.image_size) if args.image_size else None,
        cameras=args.cameras.split(",") if args.cameras else None, steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
        augment=not args.no_augment, shift_pad=args.shift_pad, color_jitter=args.color_jitter, balance=args.balance,
        dataset_weights=dataset_weights,
        state_noise=args.state_noise, scene_shift=args.scene_shift, env_state_loss=args.env_state_loss,
        keypoint_loss=args.keypoint_loss,
        action_loss_weights=action_weights, relabel_actions=args.relabel_action,
        instruction_variants=args.instruction_variants, variant_prob=args.variant_prob,
        num_workers=args.num_workers, frame_cache_gb=args.frame_cache_gb, val_episodes=args.val_episodes,
        save_every=args.save_every, log_every=args.log_every, seed=args.seed, init=args.init, resume=args.resume,
        keep_init_stats=args.keep_init_stats,
        mixed_precision=args.mixed_precision, lora_rank=args.lora_rank, weights_dtype=args.weights_dtype)
    ckpt = train(cfg, progress=not args.no_progress)
    print(f"checkpoint: {ckpt}")
    return 0


def _named_weights(text: str) -> dict[str, float]:
    """'gripper=4,dz=2' -> {"gripper": 4.0, "dz": 2.0}; a malformed item is a CLI error naming the flag."""
    weights = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError("expected NAME=WEIGHT")
            weights[name.strip()] = float(value)
        except ValueError as e:
            raise CLIError(f"--action-loss-weights {text!r}: item {item!r} is not NAME=WEIGHT ({e})") from e
    return weights
