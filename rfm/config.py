"""Configuration dataclasses: the robot interface, the model, and presets. All serialisable to JSON."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

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


@dataclass
class RobotInterface:
    """What a robot sends and receives: cameras, state and action layout, timing."""

    cameras: list[str] = field(default_factory=lambda: ["front"])  # camera names, in model input order
    image_size: tuple[int, int] = (128, 128)  # (H, W) of every camera image the model takes
    state_names: list[str] = field(default_factory=lambda: [f"s{i}" for i in range(4)])  # one per state dim
    action_names: list[str] = field(default_factory=lambda: [f"a{i}" for i in range(4)])  # one per action dim
    chunk_size: int = 16  # H: actions predicted per call
    control_hz: float = 10.0  # rate at which the robot executes actions
    robot_type: str = "unknown"  # free-form robot description (e.g. "sawyer")

    def __post_init__(self) -> None:
        self.cameras = list(self.cameras)
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.state_names = list(self.state_names)
        self.action_names = list(self.action_names)
        _check(len(self.cameras) >= 1, "interface.cameras", self.cameras, "at least one camera name")
        _check(len(set(self.cameras)) == len(self.cameras), "interface.cameras", self.cameras, "unique names")
        _check(
            len(self.image_size) == 2 and all(8 <= v <= 1024 for v in self.image_size),
            "interface.image_size", self.image_size, "(H, W) with each between 8 and 1024",
        )
        _check(len(self.action_names) >= 1, "interface.action_names", self.action_names, "at least one action")
        _check(1 <= self.chunk_size <= 256, "interface.chunk_size", self.chunk_size, "an integer in [1, 256]")
        _check(self.control_hz > 0, "interface.control_hz", self.control_hz, "a positive rate in Hz")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
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
    vision_points: int = 0  # the first P keypoints, triangulated across cameras into world-frame points (0 = off)
    camera_projections: list | None = None  # (N_cam, 3, 4) world -> normalised image, for vision_points (calibration)
    relative_points: bool = False  # the point token also gets each point minus the hand and minus each other point
    vision_path: str | None = None  # local directory of a Hugging Face vision model (vision_backbone="hf")
    vision_hf_config: dict | None = None  # HF config dict, stored so checkpoints rebuild without vision_path
    text_encoder: str = DEFAULT_TEXT_ENCODER  # "all-MiniLM-L6-v2" (packaged) or a local sentence-encoder dir
    text_max_tokens: int = 24  # instruction tokens kept (padded/truncated)
    freeze_text_encoder: bool = True  # keep the pretrained language encoder frozen
    norm_mode: str = "mean_std"  # how state/actions are normalised: mean_std, quantile (q01..q99) or min_max
    env_state_dim: int = 0  # auxiliary head predicting the privileged environment state (training only; 0 = none)

    def __post_init__(self) -> None:
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
        if self.camera_projections is not None:
            shape = np.shape(self.camera_projections)
            _check(len(shape) == 3 and shape[1:] == (3, 4) and shape[0] >= 2, "model.camera_projections",
                   f"an array of shape {list(shape)}", "one 3 x 4 projection per camera, at least two cameras")
            self.camera_projections = np.asarray(self.camera_projections, dtype=float).tolist()
        if self.vision_backbone == "hf":
            _check(self.vision_path is not None or self.vision_hf_config is not None, "model.vision_path",
                   self.vision_path, "a local Hugging Face model directory when vision_backbone='hf'")
        _check(0 <= self.env_state_dim <= 256, "model.env_state_dim", self.env_state_dim, "in [0, 256]")
        _check(4 <= self.text_max_tokens <= 256, "model.text_max_tokens", self.text_max_tokens, "in [4, 256]")
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


def preset(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of a named preset, with field overrides; unknown names get a 'did you mean'."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}.{did_you_mean(name, list(PRESETS))}")
    unknown = [k for k in overrides if k not in {f.name for f in fields(ModelConfig)}]
    if unknown:
        names = [f.name for f in fields(ModelConfig)]
        raise ConfigError(f"unknown model field {unknown[0]!r}.{did_you_mean(unknown[0], names)}")
    return ModelConfig(preset=name, **{**PRESETS[name], **overrides})


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy: the model and the robot it serves."""

    model: ModelConfig = field(default_factory=ModelConfig)
    interface: RobotInterface = field(default_factory=RobotInterface)

    def __post_init__(self) -> None:
        proj = self.model.camera_projections
        _check(proj is None or len(proj) == len(self.interface.cameras), "model.camera_projections",
               f"{len(proj or [])} projections", f"one per camera in interface.cameras {self.interface.cameras}")
        _check(self.model.vision_points == 0 or proj is not None, "model.camera_projections", proj,
               "the cameras' projections when model.vision_points > 0 (rfm train reads them from a dataset that "
               "records features.observation.environment_state.info.camera_projection)")
        _check(not self.model.relative_points or (self.model.vision_points > 0 and self.interface.state_dim >= 3),
               "model.relative_points", self.model.relative_points,
               "false unless model.vision_points > 0 and the state starts with the hand's x, y, z in the cameras' "
               f"world frame (state_dim={self.interface.state_dim})")

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "interface": self.interface.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        for key in ("model", "interface"):
            if key not in d or not isinstance(d[key], dict):
                raise ConfigError(f"config is missing the {key!r} section")
        return cls(model=ModelConfig.from_dict(d["model"]), interface=RobotInterface.from_dict(d["interface"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_interface(self, **kw: Any) -> PolicyConfig:
        return PolicyConfig(model=self.model, interface=replace(self.interface, **kw))


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
