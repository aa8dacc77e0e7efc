"""Simulator-privileged training aids, registered with the trainer's extension point (rfm.train.aids).

A simulator knows where every object is; a real robot's dataset does not. These aids use that knowledge while
training in simulation and leave the policy itself unchanged: the served and exported graphs never see them.
Loaded through the `rfm.plugins` entry point (pyproject.toml), so the core trainer never imports this module.

- `env_state`: predict observation.environment_state (object and goal positions) from the camera tokens.
- `keypoints`: put spatial-softmax keypoint p on environment point p in every camera (through the calibration).
- `scene_shift`: move the end effector and the triangulated points by one random offset per sample.
- `relabel`: map exact scripted action values before training (optionally for one task).
- instruction variants "metaworld": paraphrases of rfm's Meta-World instructions (never the evaluation ones).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rfm.config import ConfigError
from rfm.constants import OBS_ENV_STATE
from rfm.model.normalize import Normalizer
from rfm.sim.instructions import training_variants
from rfm.sim.keypoints import heatmap_loss, keypoint_targets
from rfm.sim.relabel import Relabel, relabel_actions
from rfm.train.aids import TrainBatch, TrainingAid, register_aid
from rfm.train.instructions import register_variants


def _env_dim(data) -> int:
    dim = data.feature_dims.get(OBS_ENV_STATE, 0)
    if not dim:
        raise ConfigError(f"this aid needs {OBS_ENV_STATE} in at least one dataset, and none has it "
                          f"(rfm data generate metaworld records it for simulated demos)")
    return dim


@register_aid
class EnvStateAid(TrainingAid):
    """Auxiliary head: where objects and goal are, from the camera tokens alone (one learned query attends over them).

    Not from the fused tokens: there the robot state is one attention hop away, and mid-episode the hand's position
    already tells where a held object is, so the head would learn that instead of looking.
    """

    name = "env_state"
    features = (OBS_ENV_STATE,)
    loss_names = ("env_state",)

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight={weight} must be >= 0")
        self.weight = float(weight)

    def setup(self, policy, data) -> None:
        dim, heads, n = policy.config.model.dim, policy.config.model.heads, _env_dim(data)
        self.norm = Normalizer(n)
        self.norm.set_stats(data.stats.get(OBS_ENV_STATE), "mean_std")
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n))

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Camera tokens (B, T, D) -> normalised environment state (B, D_env)."""
        q = self.query.expand(tokens.shape[0], -1, -1)
        pooled, _ = self.attn(q, tokens, tokens, need_weights=False)
        return self.out(pooled[:, 0])

    def losses(self, net, feats, batch: TrainBatch) -> dict[str, torch.Tensor]:
        env = batch.extras.get("env_state")
        if env is None:
            return {}
        err = F.l1_loss(self.predict(feats.tokens), self.norm(env.float()), reduction="none").mean(-1)
        valid = batch.extras["env_valid"].float()  # samples of datasets without an environment state add nothing
        return {"env_state": (err * valid).sum() / valid.sum().clamp_min(1.0)}


@register_aid
class KeypointAid(TrainingAid):
    """Heatmap loss putting keypoint p on point p of the environment state (object 1, object 2, goal) in every camera,
    through the robot interface's camera calibration: teaches the encoder to find small objects."""

    name = "keypoints"
    features = (OBS_ENV_STATE,)
    keypoints = True
    loss_names = ("keypoints",)

    def __init__(self, weight: float = 1.0, sigma: float = 1.0) -> None:
        super().__init__()
        if weight < 0 or sigma <= 0:
            raise ValueError(f"weight={weight} must be >= 0 and sigma={sigma} > 0")
        self.weight, self.sigma = float(weight), float(sigma)

    def setup(self, policy, data) -> None:
        _env_dim(data)
        if not policy.config.model.vision_keypoints:
            raise ConfigError("train.aids.keypoints needs a model with keypoints (model.vision_keypoints > 0)")
        proj = policy.interface.projections()
        if proj is None:
            raise ConfigError(f"train.aids.keypoints needs a calibration for every camera "
                              f"{policy.interface.cameras} (interface.calibration; rfm data generate records it)")
        self.register_buffer("projections", torch.as_tensor(np.asarray(proj, np.float32)), persistent=False)

    def losses(self, net, feats, batch: TrainBatch) -> dict[str, torch.Tensor]:
        env = batch.extras.get("env_state")
        if env is None:
            return {}
        targets, valid = keypoint_targets(env, batch.extras["env_valid"], self.projections, batch.image_offsets)
        return {"keypoints": heatmap_loss(feats.logits, targets, valid, self.sigma)}


@register_aid
class SceneShiftAid(TrainingAid):
    """Moves the end effector (interface.ee_position) and the triangulated points by one random offset per sample,
    uniform in +-metres per axis: keeps every offset between hand, object and goal, hides absolute positions."""

    name = "scene_shift"

    def __init__(self, metres: float = 0.05) -> None:
        super().__init__()
        if metres <= 0:
            raise ValueError(f"metres={metres} must be > 0")
        self.metres = float(metres)

    def setup(self, policy, data) -> None:
        if policy.net.point_token is None:
            raise ConfigError("train.aids.scene_shift needs a model with triangulated points (model.vision_points > 0)")
        self.dims = policy.interface.ee_indices()
        if self.dims is None:
            raise ConfigError("train.aids.scene_shift needs interface.ee_position (the end effector's x, y, z in the "
                              "calibration's world frame)")

    def transform(self, batch: TrainBatch) -> TrainBatch:
        state = batch.state
        delta = (torch.rand(state.shape[0], 3, device=state.device) * 2 - 1) * self.metres
        state = state.clone()
        state[:, self.dims] += delta.to(state.dtype)
        return batch.replace(state=state, point_shift=delta)


@register_aid
class RelabelAid(TrainingAid):
    """Maps exact action values before training, in memory (scripted labels only: a real robot's actions never
    repeat a float exactly). rules: ["gripper:0=-1", "gripper:0=-1@push-v3"]; stats follow the new labels."""

    name = "relabel"

    def __init__(self, rules: list[str] | str = ()) -> None:
        super().__init__()
        rules = [rules] if isinstance(rules, str) else list(rules)
        if not rules:
            raise ValueError("rules is empty: expected NAME:OLD=NEW[@TASK] items, e.g. gripper:0=-1")
        self.rules = [Relabel.parse(r) for r in rules]

    def prepare_data(self, datasets: list) -> dict:
        return {"relabelled_actions": relabel_actions(datasets, self.rules)}


register_variants("metaworld", training_variants)

__all__ = ["EnvStateAid", "KeypointAid", "RelabelAid", "SceneShiftAid"]
