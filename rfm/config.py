"""Configuration dataclasses: the robot interface, the model, and presets. All serialisable to JSON."""

from __future__ import annotations

import difflib
import json
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from rfm.calibration import ASPECT_MODES, check_calibration, model_projection
from rfm.constants import DEFAULT_TEXT_ENCODER


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_field_types(obj: Any, section: str) -> None:
    """A dataclass's scalar fields (int, float, bool, str, optional or not) and lists of names hold what their type
    says: ConfigError naming `section.field` otherwise (`--set lr=fast`, `"dim": "128"` in a config.json), before
    a comparison with the value fails obscurely. An int where a float is meant is taken as that float, and a string
    that reads as the number meant (YAML 1.1 reads `lr: 3e-4` as a string) as that number."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        options = set(get_args(hint)) if get_origin(hint) in (Union, UnionType) else {hint}
        if value is None and type(None) in options:
            continue
        options.discard(type(None))
        if any(get_origin(t) is list for t in options) and str not in options and isinstance(value, str):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected a list")
        scalar = [t for t in options if t in _KINDS]
        if len(scalar) != len(options):
            continue  # a list, dict or tuple: checked where it is used
        if isinstance(value, str) and str not in scalar and value.strip():
            for t in (int, float):
                if t in scalar:
                    try:
                        value = t(value)
                        break
                    except ValueError:
                        pass
            setattr(obj, f.name, value)
        if float in scalar and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
        elif not any(isinstance(value, t) and (t is bool or not isinstance(value, bool)) for t in scalar):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected "
                              f"{' or '.join(_KINDS[t] for t in scalar)}")


@dataclass
class RobotInterface:
    """What a robot sends and receives: cameras, state and action layout, timing, and (optionally) its geometry."""

    cameras: list[str] = field(default_factory=lambda: ["front"])  # camera names, in model input order
    image_size: tuple[int, int] = (128, 128)  # (H, W) the model takes: every frame is fitted to it (rfm.imaging)
    state_names: list[str] = field(default_factory=lambda: [f"s{i}" for i in range(4)])  # one per state dim
    action_names: list[str] = field(default_factory=lambda: [f"a{i}" for i in range(4)])  # one per action dim
    chunk_size: int = 16  # H: actions predicted per call
    control_hz: float = 10.0  # rate at which the robot executes actions
    robot_type: str = "unknown"  # free-form robot description (e.g. "sawyer")
    native_sizes: dict[str, tuple[int, int]] | None = None  # {camera: (H, W)} the robot's frames arrive at
    aspect: str = "resize"  # native -> model size when aspects differ: resize (stretch) | pad | crop
    calibration: dict[str, dict] | None = None  # {camera: calibration} (rfm.calibration): optional robot geometry
    ee_position: list[str] | None = None  # the 3 state names that are the end effector's x, y, z in that world frame

    def __post_init__(self) -> None:
        check_field_types(self, "interface")
        for name in ("cameras", "state_names", "action_names"):
            value = getattr(self, name)
            _check(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), f"interface.{name}",
                   value, "a list of names (strings)")
            setattr(self, name, list(value))
        size = self.image_size
        _check(isinstance(size, (list, tuple)) and len(size) == 2
               and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer() for v in size),
               "interface.image_size", size, "(H, W): two whole numbers")
        self.image_size = tuple(int(v) for v in size)  # type: ignore[assignment]
        _check(len(self.cameras) >= 1, "interface.cameras", self.cameras, "at least one camera name")
        _check(len(set(self.cameras)) == len(self.cameras), "interface.cameras", self.cameras, "unique names")
        _check(
            len(self.image_size) == 2 and all(8 <= v <= 1024 for v in self.image_size),
            "interface.image_size", self.image_size, "(H, W) with each between 8 and 1024",
        )
        _check(len(self.action_names) >= 1, "interface.action_names", self.action_names, "at least one action")
        _check(1 <= self.chunk_size <= 256, "interface.chunk_size", self.chunk_size, "an integer in [1, 256]")
        _check(self.control_hz > 0, "interface.control_hz", self.control_hz, "a positive rate in Hz")
        _check(self.aspect in ASPECT_MODES, "interface.aspect", self.aspect,
               f"one of {ASPECT_MODES}.{did_you_mean(str(self.aspect), list(ASPECT_MODES))}")
        if self.native_sizes is not None:
            sizes = {}
            for cam, hw in dict(self.native_sizes).items():
                self._known_camera("native_sizes", cam)
                _check(len(hw) == 2 and all(8 <= int(v) <= 8192 for v in hw), f"interface.native_sizes.{cam}", hw,
                       "(H, W) with each between 8 and 8192")
                sizes[cam] = (int(hw[0]), int(hw[1]))
            self.native_sizes = sizes or None
        if self.calibration is not None:
            cal = {}
            for cam, c in dict(self.calibration).items():
                self._known_camera("calibration", cam)
                try:
                    cal[cam] = check_calibration(c, cam, self.native_size(cam) if self.native_sizes else None)
                except ValueError as e:
                    raise ConfigError(str(e)) from e
            self.calibration = cal or None
        if self.ee_position is not None:
            self.ee_position = [str(n) for n in self.ee_position]
            _check(len(self.ee_position) == 3 and all(n in self.state_names for n in self.ee_position),
                   "interface.ee_position", self.ee_position,
                   f"three names from interface.state_names {self.state_names} (the end effector's x, y, z)")

    def _known_camera(self, what: str, cam: str) -> None:
        if cam not in self.cameras:
            raise ConfigError(f"interface.{what} names camera {cam!r}, which is not in interface.cameras "
                              f"{self.cameras}.{did_you_mean(str(cam), self.cameras)}")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def native_size(self, camera: str) -> tuple[int, int]:
        """(H, W) the robot sends for `camera`: its declared native size, else the model's input size."""
        return tuple((self.native_sizes or {}).get(camera, self.image_size))  # type: ignore[return-value]

    def projections(self) -> np.ndarray | None:
        """(N_cam, 3, 4) world -> normalised model-input coordinates, in camera order; None unless every camera is
        calibrated."""
        if not self.calibration or any(c not in self.calibration for c in self.cameras):
            return None
        native = self.native_sizes or {}
        return np.stack([model_projection(self.calibration[c], native.get(c), self.image_size, self.aspect)
                         for c in self.cameras])

    def can_triangulate(self) -> bool:
        """Whether keypoints can be triangulated: at least two cameras, every one calibrated."""
        return len(self.cameras) >= 2 and self.projections() is not None

    def ee_indices(self) -> list[int] | None:
        """Indices of the end effector's x, y, z in the state (None when the interface does not declare them)."""
        return [self.state_names.index(n) for n in self.ee_position] if self.ee_position else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        if self.native_sizes:
            d["native_sizes"] = {k: list(v) for k, v in self.native_sizes.items()}
        d["state_dim"] = self.state_dim
        d["action_dim"] = self.action_dim
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RobotInterface:
        return cls(**_known(cls, d, "interface"))


HEADS = ("chunk", "flow")
VISION_BACKBONES = ("resnet", "hf")
NORM_MODES = ("mean_std", "quantile", "min_max")
KEYPOINT_SOURCES = ("stem", "block", "branch")


@dataclass
class ModelConfig:
    """Architecture and behaviour of the policy network."""

    preset: str = "custom"  # name of the preset this config came from
    dim: int = 256  # transformer width
    encoder_layers: int = 4  # fusion transformer layers over [language, state, image] tokens
    decoder_layers: int = 4  # action decoder layers (self-attention over actions + cross-attention)
    heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden size / dim
    dropout: float = 0.1  # dropout in attention and MLP during training
    head: str = "chunk"  # "chunk" (L1 regression, one pass) or "flow" (flow matching, Euler steps)
    flow_steps: int = 10  # K Euler steps at inference for the flow head
    vision_backbone: str = "resnet"  # "resnet" (GroupNorm ResNet from scratch) or "hf" (local HF vision model)
    vision_widths: tuple[int, ...] = (32, 64, 128, 256)  # channels of the ResNet stages (each halves resolution)
    vision_blocks: int = 1  # residual blocks per ResNet stage
    vision_keypoints: int = 0  # K spatial-softmax keypoints per camera (one extra token): finds small objects
    vision_keypoint_source: str = "stem"  # keypoint heatmaps read: "stem" (one conv), "block" (+1 block), "branch" (own convs)
    vision_points: int = 0  # the first P keypoints, triangulated through interface.calibration (0 = off)
    relative_points: bool = False  # the point token also gets each point minus interface.ee_position and each other
    vision_path: str | None = None  # local directory of a Hugging Face vision model (vision_backbone="hf")
    vision_hf_config: dict | None = None  # HF config dict, stored so checkpoints rebuild without vision_path
    text_encoder: str = DEFAULT_TEXT_ENCODER  # "all-MiniLM-L6-v2" (packaged) or a local sentence-encoder dir
    text_max_tokens: int = 24  # instruction tokens kept (padded/truncated)
    norm_mode: str = "mean_std"  # how state/actions are normalised: mean_std, quantile (q01..q99) or min_max
    prefix_max: int = 0  # delay-aware continuation: up to this many committed actions (executed while the chunk is
    # computed) condition the chunk, which then continues them; 0 = off (the model takes no committed actions)

    def __post_init__(self) -> None:
        check_field_types(self, "model")
        self.vision_widths = tuple(int(w) for w in self.vision_widths)
        _check(self.dim >= 16 and self.dim % self.heads == 0, "model.dim", self.dim,
               f"an integer >= 16 divisible by model.heads={self.heads}")
        _check(self.heads >= 1, "model.heads", self.heads, "a positive integer")
        _check(self.encoder_layers >= 1, "model.encoder_layers", self.encoder_layers, "a positive integer")
        _check(self.decoder_layers >= 1, "model.decoder_layers", self.decoder_layers, "a positive integer")
        _check(self.mlp_ratio > 0, "model.mlp_ratio", self.mlp_ratio, "a positive number")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a number in [0, 1)")
        _check(self.head in HEADS, "model.head", self.head, f"one of {HEADS}.{did_you_mean(self.head, list(HEADS))}")
        _check(1 <= self.flow_steps <= 100, "model.flow_steps", self.flow_steps, "an integer in [1, 100]")
        _check(self.vision_backbone in VISION_BACKBONES, "model.vision_backbone", self.vision_backbone,
               f"one of {VISION_BACKBONES}.{did_you_mean(self.vision_backbone, list(VISION_BACKBONES))}")
        _check(len(self.vision_widths) >= 1 and all(w >= 8 for w in self.vision_widths),
               "model.vision_widths", self.vision_widths, "one or more stage widths, each >= 8")
        _check(self.vision_blocks >= 1, "model.vision_blocks", self.vision_blocks, "a positive integer")
        _check(0 <= self.vision_keypoints <= 256, "model.vision_keypoints", self.vision_keypoints, "in [0, 256]")
        _check(self.vision_keypoint_source in KEYPOINT_SOURCES, "model.vision_keypoint_source",
               self.vision_keypoint_source, f"one of {KEYPOINT_SOURCES}")
        _check(0 <= self.vision_points <= self.vision_keypoints, "model.vision_points", self.vision_points,
               f"in [0, model.vision_keypoints={self.vision_keypoints}]")
        if self.vision_backbone == "hf":
            _check(self.vision_path is not None or self.vision_hf_config is not None, "model.vision_path",
                   self.vision_path, "a local Hugging Face model directory when vision_backbone='hf'")
        _check(4 <= self.text_max_tokens <= 256, "model.text_max_tokens", self.text_max_tokens, "in [4, 256]")
        _check(0 <= self.prefix_max <= 256, "model.prefix_max", self.prefix_max,
               "an integer >= 0 (below interface.chunk_size): the most committed actions a request may carry")
        _check(self.norm_mode in NORM_MODES, "model.norm_mode", self.norm_mode,
               f"one of {NORM_MODES}.{did_you_mean(self.norm_mode, list(NORM_MODES))}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vision_widths"] = list(self.vision_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**_known(cls, d, "model"))


PRESETS: dict[str, dict[str, Any]] = {
    # CI and unit tests: about 1-2 M trainable parameters.
    "tiny": {"dim": 128, "encoder_layers": 2, "decoder_layers": 2, "heads": 4, "vision_widths": (16, 32, 64, 128),
             "vision_keypoints": 16, "flow_steps": 4},
    # Default: fits a 30 MB fp16 checkpoint, runs at interactive rates on a laptop CPU.
    "small": {"dim": 256, "encoder_layers": 4, "decoder_layers": 4, "heads": 8, "vision_widths": (32, 64, 128, 256),
              "vision_blocks": 2, "vision_keypoints": 16, "flow_steps": 10},
    # About 100 M parameters: for GPU training on larger datasets.
    "base": {"dim": 768, "encoder_layers": 8, "decoder_layers": 6, "heads": 12, "vision_widths": (64, 128, 256, 512),
             "vision_blocks": 2, "vision_keypoints": 32, "flow_steps": 10},
}


PRESET_IMAGE_SIZE: dict[str, tuple[int, int]] = {"tiny": (128, 128), "small": (128, 128), "base": (224, 224)}


def preset_image_size(name: str | None) -> tuple[int, int]:
    """The input resolution (H, W) a preset is built for; cameras of any native size are fitted to it."""
    return PRESET_IMAGE_SIZE.get(name or "small", PRESET_IMAGE_SIZE["small"])


def check_model_fields(overrides: dict, where: str = "model") -> None:
    """ConfigError naming the first key of `overrides` that is not a ModelConfig field, with a 'did you mean'."""
    names = [f.name for f in fields(ModelConfig)]
    unknown = [str(k) for k in overrides if k not in names]
    if unknown:
        raise ConfigError(f"unknown {where} field {unknown[0]!r}.{did_you_mean(unknown[0], names)}")


def preset(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of a named preset, with field overrides; unknown names get a 'did you mean'."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}.{did_you_mean(name, list(PRESETS))}")
    check_model_fields(overrides)
    return ModelConfig(preset=name, **{**PRESETS[name], **overrides})


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy: the model and the robot it serves."""

    model: ModelConfig = field(default_factory=ModelConfig)
    interface: RobotInterface = field(default_factory=RobotInterface)

    def __post_init__(self) -> None:
        m, itf = self.model, self.interface
        if m.vision_points:
            _check(itf.can_triangulate(), "interface.calibration",
                   sorted(itf.calibration or {}),
                   f"a calibration for every camera of {itf.cameras} (at least two) when model.vision_points > 0")
        _check(not m.relative_points or (m.vision_points > 0 and itf.ee_position is not None),
               "model.relative_points", m.relative_points,
               "false unless model.vision_points > 0 and interface.ee_position names the end effector's x, y, z")
        _check(m.prefix_max < itf.chunk_size, "model.prefix_max", m.prefix_max,
               f"below interface.chunk_size={itf.chunk_size}: a chunk continues its committed actions")

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "interface": self.interface.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        for key in ("model", "interface"):
            if key not in d or not isinstance(d[key], dict):
                raise ConfigError(f"config is missing the {key!r} section")
        model, interface = _upgrade(dict(d["model"]), dict(d["interface"]))
        return cls(model=ModelConfig.from_dict(model), interface=RobotInterface.from_dict(interface))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_interface(self, **kw: Any) -> PolicyConfig:
        return PolicyConfig(model=self.model, interface=replace(self.interface, **kw))


def _upgrade(model: dict, interface: dict) -> tuple[dict, dict]:
    """Configs written before robot geometry moved to the interface: projections listed in camera order become a
    calibration by camera name, and relative points read the first three state values (as they did)."""
    proj = model.pop("camera_projections", None)
    if proj is not None and "calibration" not in interface:
        interface["calibration"] = {c: {"projection": p} for c, p in zip(interface.get("cameras", []), proj)}
        if model.get("relative_points") and "ee_position" not in interface:
            interface["ee_position"] = list(interface.get("state_names", []))[:3]
    model.pop("freeze_text_encoder", None)  # always frozen; the field was never read
    model.pop("env_state_dim", None)  # the environment-state head is a training aid now, not part of the policy
    return model, interface


def _known(cls: type, d: dict, section: str) -> dict:
    """Keep keys that are fields of cls; reject unknown ones with a 'did you mean'."""
    names = [f.name for f in fields(cls)]
    derived = {"state_dim", "action_dim"}
    out = {}
    for k, v in d.items():
        if k in derived:
            continue
        if k not in names:
            raise ConfigError(f"unknown field {section}.{k}.{did_you_mean(k, names)}")
        out[k] = v
    return out
