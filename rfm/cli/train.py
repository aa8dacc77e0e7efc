"""`rfm train`: fine-tune a policy on a LeRobot dataset (CPU, one GPU, or torchrun / `accelerate launch` for many).

Settings come from, in rising precedence: TrainConfig's defaults, `--config FILE` (YAML or JSON; a run's written
train_config.json reproduces it), the flags below, and `--set FIELD=VALUE` (any TrainConfig field, dotted for
nested ones: `--set aids.keypoints.weight=1`). Research knobs (training aids, augmentation details) live in the
config file, not in the flags.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from rfm.cli.args import checkpoint_dir, positive_int
from rfm.cli.errors import CLIError
from rfm.config import did_you_mean
from rfm.train.config import BALANCE_MODES, TrainConfig, dataset_dirs, read_config_file

NOT_CONFIG = ("config", "set", "threads", "no_progress", "func", "command")  # flags that are not TrainConfig fields
# flags of older rfm versions -> the config field that replaced them (--set FIELD=VALUE or --config FILE)
REMOVED_FLAGS = {"--state-noise": "state_noise", "--shift-pad": "shift_pad", "--color-jitter": "color_jitter",
                 "--variant-prob": "variant_prob", "--scene-shift": "aids.scene_shift.metres",
                 "--env-state-loss": "aids.env_state.weight", "--keypoint-loss": "aids.keypoints.weight"}


class _Removed(argparse.Action):
    """A flag rfm no longer has: an error naming the config field that replaced it."""

    def __init__(self, option_strings, dest, field: str, **kw) -> None:
        super().__init__(option_strings, dest, nargs="?", **kw)
        self.field = field

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is no longer a flag: it is the config field {self.field} "
                     f"(--set {self.field}={values if values is not None else 'VALUE'}, or in --config FILE)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a policy on a LeRobot dataset",
                       description="Train a policy. Several GPUs or nodes as one run: `torchrun --standalone "
                                   "--nproc_per_node N -m rfm.cli.main train ...` (CPU cores where there is no "
                                   "GPU; on GPUs also `accelerate launch --multi_gpu --num_processes N -m "
                                   "rfm.cli.main train ...`). Every TrainConfig field is settable from --config FILE "
                                   "or --set FIELD=VALUE.",
                       argument_default=argparse.SUPPRESS)  # only flags given override the config file
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON train config (e.g. a run's train_config.json); flags override it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any config field (YAML value; dotted for nested: aids.keypoints.weight=1); repeatable")
    for flag, field in REMOVED_FLAGS.items():  # an older rfm's flags: say what replaced them
        p.add_argument(flag, action=_Removed, field=field, help=argparse.SUPPRESS)
    p.add_argument("--dataset", help="LeRobot v3.0/v2.1 dataset directory; comma-separate several to train on them "
                                     "together (e.g. the original demos plus fleet recordings)")
    p.add_argument("--out", help="run directory (checkpoint/, logs/, train_config.json)")
    p.add_argument("--init", type=checkpoint_dir, help="checkpoint to fine-tune from (a new robot: layers that do not fit are re-initialised, "
                                  "geometry it does not declare is dropped)")
    p.add_argument("--preset", help="tiny | small | base (default: the --init model, else small)")
    p.add_argument("--head", choices=["chunk", "flow"], help="default: the --init head, else chunk")
    p.add_argument("--interface", metavar="FILE",
                   help="YAML/JSON of robot interface fields the dataset lacks: calibration (by camera name), "
                        "ee_position, aspect (resize|pad|crop)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm")
    p.add_argument("--vision-lr-scale", type=float, help="lr multiplier of the vision encoder (e.g. 0.1)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--ema-decay", type=float, help="0 disables EMA")
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="model input size (default: the --init model's, else the preset's; frames are resized to it)")
    p.add_argument("--cameras", help="comma-separated camera names (default: all)")
    p.add_argument("--no-augment", action="store_true", help="disable random shift and colour jitter")
    p.add_argument("--action-loss-weights", metavar="NAME=W,...",
                   help="weight of named action dimensions in the action loss, the rest 1 (e.g. gripper=4)")
    p.add_argument("--instruction-variants", metavar="FILE|NAME",
                   help="instruction augmentation: JSON {instruction: [variants]} or a built-in table (metaworld)")
    p.add_argument("--balance", choices=list(BALANCE_MODES),
                   help="tasks: each task gets the same share of samples (short tasks are not drowned out)")
    p.add_argument("--dataset-weights", metavar="W1,W2,...",
                   help="share of samples from each --dataset, in order (default: in proportion to their frames)")
    p.add_argument("--recorded-episodes", metavar="KINDS",
                   help="in fleet recordings (rfm serve --record), learn from: all (default), or a comma list of "
                        "success, failure, unknown (episodes by the outcome the robot reported) and corrected "
                        "(the ticks an operator corrected), e.g. success,corrected; other datasets are used whole")
    p.add_argument("--exclude-episodes", metavar="[DATASET:]EPISODES", action="append",
                   help="leave these episodes of a --dataset out of training and validation, e.g. 3,7,10-12 (with "
                        "several datasets, name it: data/demos:3,7); repeat for several datasets")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--frame-cache-gb", type=float,
                   help="decoded-frame cache (GiB), shared by the DataLoader workers of all training processes on "
                        "this machine")
    p.add_argument("--val-episodes", type=int, help="hold out the last N episodes; report their loss while training")
    p.add_argument("--save-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--keep-init-stats", action="store_true",
                   help="normalise with the --init checkpoint's stats instead of this dataset's (same robot)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint already in OUT (without --resume or this, one there is an error)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--lora-rank", type=int, help="LoRA rank for a pretrained HF vision backbone")
    p.add_argument("--weights-dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--model", metavar="JSON", help='model config overrides, e.g. \'{"dim": 192}\'')
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads (default: torch's choice; lower it when other jobs share the cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --config, the flags given, then --set; errors name the flag, file or field."""
    d = read_config_file(args.config) if getattr(args, "config", None) else {}
    given = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    for key, value in given.items():
        if key == "no_augment":
            d["augment"] = not value
        elif key == "cameras":
            d["cameras"] = [c.strip() for c in value.split(",") if c.strip()]
        elif key == "image_size":
            d["image_size"] = list(value)
        elif key == "dataset_weights":
            try:
                d["dataset_weights"] = [float(w) for w in value.split(",")]
            except ValueError as e:
                raise CLIError(f"--dataset-weights {value!r}: expected comma-separated numbers ({e})") from e
        elif key == "action_loss_weights":
            d["action_loss_weights"] = _named_weights(value)
        elif key == "model":
            try:
                d["model_overrides"] = {**d.get("model_overrides", {}), **json.loads(value)}
            except json.JSONDecodeError as e:
                raise CLIError(f"--model is not valid JSON: {e}") from e
        elif key == "exclude_episodes":
            continue  # once the datasets are known (--config may name them)
        elif key == "interface":
            d["interface"] = {**d.get("interface", {}), **read_config_file(value)}
        else:
            d[key] = value
    for item in getattr(args, "set", []):
        _set(d, item)
    where = f"--config {args.config}" if getattr(args, "config", None) else "the train config"
    if "dataset" not in d or "out" not in d:
        raise CLIError(f"{where}: give --dataset and --out (or dataset and out in the --config file)")
    for spec in given.get("exclude_episodes") or []:
        path, episodes = _excluded(spec, d["dataset"])
        d.setdefault("exclude_episodes", {})
        d["exclude_episodes"][path] = sorted({*d["exclude_episodes"].get(path, []), *episodes})
    return TrainConfig.from_dict(d, where)


def run(args: argparse.Namespace) -> int:
    import torch

    cfg = config_from_args(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    from rfm.train.launch import first_process
    from rfm.train.loop import train

    ckpt = train(cfg, progress=not getattr(args, "no_progress", False))
    if first_process():  # one line from a multi-process run
        print(f"checkpoint: {ckpt}")
    return 0


def _excluded(spec: str, dataset: str | list) -> tuple[str, list[int]]:
    """--exclude-episodes [DATASET:]3,7,10-12 -> (dataset, [3, 7, 10, 11, 12]); CLIError saying what is wrong."""
    datasets = dataset_dirs(dataset)
    path, sep, numbers = spec.rpartition(":")
    if not sep:
        if len(datasets) != 1:
            raise CLIError(f"--exclude-episodes {spec}: with several datasets, name the one: DATASET:EPISODES, "
                           f"DATASET one of {', '.join(datasets)}")
        path = datasets[0]
    episodes: list[int] = []
    for part in numbers.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise CLIError(f"--exclude-episodes {spec}: {part.strip()!r} is not an episode index or a range like "
                           f"10-12") from None
        if first < 0 or last < first:
            raise CLIError(f"--exclude-episodes {spec}: {part.strip()!r}: expected indices >= 0, a range low-high")
        episodes.extend(range(first, last + 1))
    return path, episodes


def _set(d: dict, item: str) -> None:
    """'aids.keypoints.weight=1' -> d["aids"]["keypoints"]["weight"] = 1 (the value parsed as YAML)."""
    import yaml

    path, sep, text = item.partition("=")
    if not sep or not path.strip():
        raise CLIError(f"--set {item!r}: expected FIELD=VALUE, e.g. aids.keypoints.weight=1")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise CLIError(f"--set {item!r}: the value is not valid YAML ({e})") from e
    keys = path.strip().split(".")
    names = [f.name for f in fields(TrainConfig)]
    if keys[0] not in names:
        raise CLIError(f"--set {item!r}: unknown field {keys[0]!r}.{did_you_mean(keys[0], names)}")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise CLIError(f"--set {item!r}: {k} is not a nested field")
    node[keys[-1]] = value


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
