"""TrainConfig: everything a training run needs, serialisable to JSON next to its outputs and read back from
JSON or YAML (`rfm train --config FILE`): the written train_config.json reproduces the run."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rfm.config import ConfigError, check_field_types, check_model_fields, did_you_mean
from rfm.data.recording import parse_kinds

log = logging.getLogger("rfm.train")

BALANCE_MODES = ("none", "tasks")  # how training frames are drawn (see rfm.train.data.make_sampler)


@dataclass
class TrainConfig:
    dataset: str | list[str]  # LeRobot dataset directory; several (a list or "A,B") are trained on together
    out: str  # run directory: checkpoint/, logs/, train_config.json
    preset: str | None = None  # model preset (tiny / small / base); None: the --init checkpoint's model, else small
    head: str | None = None  # chunk | flow; None: the --init checkpoint's head, else chunk
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig field overrides
    chunk_size: int = 16  # H: actions per chunk
    image_size: tuple[int, int] | None = None  # (H, W) the model takes; None = the --init model's, else the preset's
    cameras: list[str] | None = None  # cameras to use, in order; None = all
    steps: int = 20_000  # optimizer steps
    batch_size: int = 64  # samples per optimizer step per process (before accumulation)
    grad_accum: int = 1  # gradient accumulation steps
    lr: float = 3e-4  # peak learning rate (AdamW)
    vision_lr_scale: float = 1.0  # lr multiplier for the vision encoder (e.g. 0.1 for a pretrained backbone)
    weight_decay: float = 1e-4
    warmup_steps: int = 500  # linear warmup, then cosine decay to 0
    clip_grad: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of weights (0 disables); the saved policy uses EMA weights
    augment: bool = True  # random shift + colour jitter
    shift_pad: int = 6  # random shift: pad then crop back, in pixels at model resolution
    color_jitter: float = 0.2  # max relative brightness/contrast change
    state_noise: float = 0.0  # Gaussian noise on the state, in dataset stds (against copycat shortcuts)
    action_loss_weights: dict[str, float] | None = None  # {action name: weight}, others 1; the logged loss is weighted
    aids: dict[str, dict] = field(default_factory=dict)  # training aids by name (rfm.train.aids): {"keypoints": {}}
    interface: dict[str, Any] = field(default_factory=dict)  # robot interface fields over the dataset's (calibration,
    #   ee_position, aspect, native_sizes): the robot's geometry when the dataset does not record it
    instruction_variants: str | None = None  # JSON {instruction: [variants]} or a registered table ("metaworld")
    variant_prob: float = 0.5  # chance that a sample's instruction is replaced by one of its variants
    balance: str = "none"  # none: frames drawn uniformly | tasks: every task (instruction) gets the same share
    dataset_weights: list[float] | None = None  # share of samples per dataset (normalised); None: by frame count
    recorded_episodes: str = "all"  # in fleet recordings, learn from: all | a comma list of success, failure,
    #   unknown (episodes by outcome) and corrected (frames an operator corrected); other datasets are used whole
    exclude_episodes: dict[str, list[int]] = field(default_factory=dict)  # {dataset, as in `dataset`: episode
    #   indices} left out of training and validation: a bad demo, a covered camera, a recording's late ticks
    num_workers: int = 2  # DataLoader workers
    frame_cache_gb: float = 4.0  # decoded-frame cache of all DataLoader workers of all processes on this machine
    val_episodes: int = 0  # episodes held out for a validation loss (0 = none)
    save_every: int = 1000  # steps between atomic checkpoints
    log_every: int = 50  # steps between log lines
    seed: int = 0
    init: str | None = None  # checkpoint to fine-tune from (mismatched layers are re-initialised)
    keep_init_stats: bool = False  # normalise with the init checkpoint's stats (same robot, e.g. DAgger data)
    resume: bool = False  # continue from out/checkpoint if it exists
    overwrite: bool = False  # replace a checkpoint already in out/ (without resume or this, that is an error)
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    lora_rank: int = 0  # LoRA rank on a pretrained HF vision backbone (0 = full fine-tuning)
    weights_dtype: str = "float32"  # dtype of saved weights (float16 halves the checkpoint)

    def __post_init__(self) -> None:
        for name in ("out", "init", "instruction_variants"):  # a pathlib.Path is as good as its string
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if isinstance(self.dataset, os.PathLike) or (isinstance(self.dataset, (list, tuple)) and
                                                    any(isinstance(d, os.PathLike) for d in self.dataset)):
            items = [self.dataset] if isinstance(self.dataset, os.PathLike) else self.dataset
            self.dataset = [os.fspath(d) if isinstance(d, os.PathLike) else d for d in items]
        check_field_types(self, "train")
        if not isinstance(self.model_overrides, dict):
            raise ConfigError(f"train.model_overrides={self.model_overrides!r} is invalid: expected {{field: value}}")
        check_model_fields(self.model_overrides, "train.model_overrides")
        if not self.datasets:
            raise ConfigError("train.dataset is empty: expected a LeRobot dataset directory")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"train.balance={self.balance!r} is invalid: expected one of {', '.join(BALANCE_MODES)}")
        if min(self.shift_pad, self.color_jitter, self.state_noise) < 0:
            raise ConfigError("train.shift_pad, train.color_jitter and train.state_noise must be >= 0")
        if not isinstance(self.aids, dict) or not all(isinstance(v, dict | None) for v in self.aids.values()):
            raise ConfigError(f"train.aids={self.aids!r} is invalid: expected {{name: {{option: value}}}}")
        self.aids = {str(k): dict(v or {}) for k, v in self.aids.items()}
        allowed = {"calibration", "ee_position", "aspect", "native_sizes"}
        if not isinstance(self.interface, dict) or set(self.interface) - allowed:
            bad = sorted(set(self.interface) - allowed) if isinstance(self.interface, dict) else [self.interface]
            raise ConfigError(f"train.interface has {bad[0]!r}: expected only {', '.join(sorted(allowed))}."
                              f"{did_you_mean(str(bad[0]), sorted(allowed))}")
        self.exclude_episodes = _episode_lists(self.exclude_episodes, self.datasets)
        try:
            parse_kinds(self.recorded_episodes)
        except ValueError as e:
            raise ConfigError(f"train.recorded_episodes={e}") from None
        if self.dataset_weights is not None:
            self.dataset_weights = [float(w) for w in self.dataset_weights]
            if len(self.dataset_weights) != len(self.datasets):
                raise ConfigError(f"train.dataset_weights has {len(self.dataset_weights)} values for "
                                  f"{len(self.datasets)} datasets ({', '.join(self.datasets)}): give one per dataset")
            if min(self.dataset_weights) < 0 or sum(self.dataset_weights) <= 0:
                raise ConfigError(f"train.dataset_weights={self.dataset_weights} is invalid: expected numbers >= 0, "
                                  f"at least one positive")
        if self.action_loss_weights is not None:
            self.action_loss_weights = {str(k): float(v) for k, v in dict(self.action_loss_weights).items()}
            if not all(math.isfinite(w) and w >= 0 for w in self.action_loss_weights.values()):
                raise ConfigError(f"train.action_loss_weights={self.action_loss_weights} is invalid: expected "
                                  f"finite weights >= 0")
        if not (0.0 <= self.variant_prob <= 1.0):
            raise ConfigError(f"train.variant_prob={self.variant_prob!r} is invalid: expected a number in [0, 1]")
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        for name in ("steps", "batch_size", "grad_accum", "chunk_size", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is invalid: expected a positive integer")
        if not (0.0 <= self.ema_decay < 1.0):
            raise ConfigError(f"train.ema_decay={self.ema_decay!r} is invalid: expected a number in [0, 1)")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr!r} is invalid: expected a positive number")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"train.mixed_precision={self.mixed_precision!r}: expected auto, no, bf16 or fp16")
        for name in ("warmup_steps", "val_episodes", "lora_rank", "num_workers", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is invalid: expected a number >= 0")
        for name in ("frame_cache_gb", "clip_grad", "vision_lr_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is invalid: expected a positive number")

    @property
    def datasets(self) -> list[str]:
        """The dataset directories, first one defining the robot interface."""
        return dataset_dirs(self.dataset)

    def action_weights(self, action_names: list[str]) -> list[float] | None:
        """One loss weight per action dimension of this robot (named ones as given, the rest 1); None: all equal."""
        if not self.action_loss_weights:
            return None
        unknown = sorted(set(self.action_loss_weights) - set(action_names))
        if unknown:
            raise ConfigError(f"train.action_loss_weights names {', '.join(map(repr, unknown))}, not an action of "
                              f"this robot: its actions are {', '.join(action_names)}")
        weights = [self.action_loss_weights.get(name, 1.0) for name in action_names]
        if max(weights) <= 0:
            raise ConfigError(f"train.action_loss_weights={self.action_loss_weights} leaves every action dimension "
                              f"at weight 0")
        return weights

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "train config") -> TrainConfig:
        """From a dict (a config file's contents); unknown keys are errors naming the key and the file. Fields an
        older rfm wrote (a run's train_config.json) are read as what they became (MOVED_FIELDS), with a note."""
        d = _moved_fields(dict(d), where)
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(f"{where}: unknown field {key!r}.{did_you_mean(str(key), names)}")
        for key in ("dataset", "out"):
            if key not in d:
                raise ConfigError(f"{where}: missing required field {key!r}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e


# fields of older rfm versions -> the training aid and option they became (rfm.train.aids; 0 was "off")
MOVED_FIELDS = {"scene_shift": ("scene_shift", "metres"), "env_state_loss": ("env_state", "weight"),
                "keypoint_loss": ("keypoints", "weight")}


def _moved_fields(d: dict, where: str) -> dict:
    for old, (aid, option) in MOVED_FIELDS.items():
        if old not in d:
            continue
        value = d.pop(old)
        if value:  # 0 was off: nothing to carry over
            aids = dict(d.get("aids") or {})
            aids.setdefault(aid, {}).setdefault(option, value)
            d["aids"] = aids
            log.warning("%s: field %r (an older rfm's) is now aids.%s.%s: read as such", where, old, aid, option)
    return d


def read_config_file(path: str | Path) -> dict:
    """A train config file (JSON, or YAML for .yaml / .yml) as a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: both say line and column
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of train config fields, got {type(data).__name__}")
    return data


def dataset_dirs(dataset: str | list) -> list[str]:
    """train.dataset ("a,b" or a list) -> its directories, in order."""
    items = dataset.split(",") if isinstance(dataset, str) else list(dataset)
    return [str(d).strip() for d in items if str(d).strip()]


def _episode_lists(value: Any, datasets: list[str]) -> dict[str, list[int]]:
    """train.exclude_episodes checked: each key one of the datasets, each value episode indices >= 0 (sorted)."""
    if not isinstance(value, dict):
        raise ConfigError(f"train.exclude_episodes={value!r} is invalid: expected {{dataset: [episode, ...]}}")
    out = {}
    for key, episodes in value.items():
        key = os.fspath(key) if isinstance(key, os.PathLike) else str(key).strip()
        same = [d for d in datasets if os.path.normpath(d) == os.path.normpath(key)]  # data/demos/ is data/demos
        key = same[0] if same else key
        if key not in datasets:
            raise ConfigError(f"train.exclude_episodes names {key[:200]!r}, which is not one of train.dataset "
                              f"({', '.join(datasets)}).{did_you_mean(key, datasets)}")
        items = [episodes] if isinstance(episodes, int) else episodes
        if not isinstance(items, (list, tuple)) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                                                          for e in items):
            raise ConfigError(f"train.exclude_episodes[{key!r}]={episodes!r} is invalid: expected episode indices "
                              f">= 0")
        out[key] = sorted(set(items))
    return out
