"""Training aids: optional extra losses and data transforms that plug into the trainer by name.

The trainer knows none of them. An aid registers itself with `@register_aid`; aids outside rfm's core (the
simulator's privileged supervision in rfm.sim.training_aids, or a third party's) are found through the
`rfm.plugins` entry-point group, so the trainer never imports them (rfm's own world-model objective,
rfm.train.world_model, is registered the same way). A run asks for aids by name with options:
`TrainConfig.aids = {"keypoints": {"weight": 1.0}}` (or `aids:` in a `rfm train --config` file).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import nn

from rfm.config import ConfigError, did_you_mean

PLUGIN_GROUP = "rfm.plugins"  # entry points: modules that register aids and instruction-variant tables on import


@dataclass
class TrainBatch:
    """One training batch on its device. images (B, N_cam, 3, H, W) float in [0, 255] after augmentation."""

    images: torch.Tensor
    state: torch.Tensor  # (B, D_s) robot units
    text: torch.Tensor  # (B, L, D_text) instruction token features
    text_mask: torch.Tensor  # (B, L)
    actions: torch.Tensor  # (B, H, D_a) robot units
    action_pad: torch.Tensor  # (B, H) True past the episode's end
    executed: torch.Tensor | None = None  # (B, H, D_a) robot units: what the robot executed, where recorded
    executed_recorded: torch.Tensor | None = None  # (B,) True where `executed` comes from a recording
    image_offsets: torch.Tensor | None = None  # (B, N_cam, 2) how far augmentation shifted each image (normalised)
    point_shift: torch.Tensor | None = None  # (B, 3) a shift of the whole scene's triangulated points
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # extra dataset features an aid asked for

    def replace(self, **kw: Any) -> TrainBatch:
        return replace(self, **kw)


class TrainingAid(nn.Module):
    """Base class of a training aid. Override what the aid needs; every hook has a do-nothing default.

    An aid is an nn.Module so it may own trainable parameters (an auxiliary head); they train with the policy,
    are saved in the run's training state for --resume, and are never part of the saved policy.
    """

    name: ClassVar[str] = ""
    features: ClassVar[tuple[str, ...]] = ()  # dataset features the batches must carry (e.g. environment state)
    keypoints: ClassVar[bool] = False  # its loss reads the vision encoder's keypoint heatmaps
    fused: ClassVar[bool] = False  # its losses() also takes fused=(tokens (B, T, D), mask (B, 1, 1, T))
    future_steps: int | None = None  # with the future_frames feature: how far ahead (None: the chunk size)
    loss_names: ClassVar[tuple[str, ...]] = ()  # the losses it reports (logged as <name>_loss)
    weight: float = 0.0  # multiplies each loss it returns in the total (0: computed and logged, not trained on)

    def prepare_data(self, datasets: list) -> dict:
        """Before windows are cut: may change the opened datasets in memory. Returns what the model card records."""
        return {}

    def setup(self, policy: Any, data: Any) -> None:
        """After the policy is built (`policy` an RFMPolicy, `data` the run's TrainingData): build heads, read
        calibration, check that the run can use this aid (raise ConfigError naming the option if not)."""

    def transform(self, batch: TrainBatch) -> TrainBatch:
        """Change a batch before the forward pass (e.g. a geometric augmentation)."""
        return batch

    def losses(self, net: nn.Module, feats: Any, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Unweighted named losses from the policy net, its image features (rfm.model.network.ImageFeatures) and
        the batch (aids with `fused = True` also get the fused observation tokens). Names become `<name>_loss` in
        the logs."""
        return {}


_AIDS: dict[str, type[TrainingAid]] = {}
_loaded = False


def register_aid(cls: type[TrainingAid]) -> type[TrainingAid]:
    """Class decorator: make an aid available by `cls.name` in TrainConfig.aids."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a training aid needs a non-empty `name`")
    _AIDS[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import every module registered under the `rfm.plugins` entry-point group (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()


def available_aids() -> list[str]:
    load_plugins()
    return sorted(_AIDS)


def build_aid(name: str, options: dict | None) -> TrainingAid:
    """An aid instance from its name and options; unknown names and options are ConfigErrors naming them."""
    names = available_aids()
    if name not in _AIDS:
        raise ConfigError(f"train.aids: unknown training aid {name!r}; available: {', '.join(names) or 'none'}."
                          f"{did_you_mean(name, names)}")
    cls, options = _AIDS[name], dict(options or {})
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in params:
            raise ConfigError(f"train.aids.{name}: unknown option {key!r}; options: {', '.join(params)}."
                              f"{did_you_mean(key, params)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.aids.{name}: {e}") from e


def build_aids(spec: dict[str, dict] | None) -> list[TrainingAid]:
    return [build_aid(name, opts) for name, opts in (spec or {}).items()]


__all__ = ["PLUGIN_GROUP", "TrainBatch", "TrainingAid", "available_aids", "build_aid", "build_aids", "load_plugins",
           "register_aid"]
