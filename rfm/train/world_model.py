"""World-model objective (training aid `world_model`): from the fused observation tokens and the action chunk,
predict a latent of the frames `horizon` steps ahead (default: one chunk), so the encoder learns what the actions
will do to the scene.

The target is the vision encoder's own reading of the future frames, taken without gradient: the spatial-softmax
keypoints (where the tracked things will be; models with model.vision_keypoints > 0) or, without keypoints, each
camera's pooled features, standardised. Uses only what a field dataset holds (frames and actions), so it works on
real robots' data as well as in simulation. The head is the aid's own: it trains with the policy and is never
part of the saved policy, the served graph or an export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfm.config import ConfigError
from rfm.constants import FUTURE_FRAMES
from rfm.train.aids import TrainBatch, TrainingAid, register_aid

TARGETS = ("auto", "keypoints", "features")


@register_aid
class WorldModelAid(TrainingAid):
    """Predicts the future frames' latent from one learned query, plus the embedded action chunk, attending over
    the fused tokens."""

    name = "world_model"
    features = (FUTURE_FRAMES,)
    fused = True
    loss_names = ("world_model",)

    def __init__(self, weight: float = 0.1, target: str = "auto", horizon: int | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight={weight} must be >= 0")
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: expected one of {', '.join(TARGETS)}")
        if horizon is not None and int(horizon) < 1:
            raise ValueError(f"horizon={horizon}: expected a number of control steps >= 1 (default: the chunk size)")
        self.weight, self.target = float(weight), target
        self.future_steps = None if horizon is None else int(horizon)  # a chunk at 80 Hz is 0.2 s: little moves

    def setup(self, policy, data) -> None:
        m, net = policy.config.model, policy.net
        has_keypoints = bool(m.vision_keypoints) and getattr(net.vision, "keypoints", None) is not None
        if self.target == "keypoints" and not has_keypoints:
            raise ConfigError("train.aids.world_model.target=keypoints needs a model with keypoints "
                              "(model.vision_keypoints > 0)")
        self.keypoints = self.target == "keypoints" or (self.target == "auto" and has_keypoints)
        n_cam = len(policy.interface.cameras)
        self.out_shape = (n_cam, m.vision_keypoints * 2) if self.keypoints else (n_cam, net.vision.out_channels)
        dim, chunk, action_dim = m.dim, policy.interface.chunk_size, policy.interface.action_dim
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.actions_in = nn.Linear(chunk * action_dim, dim)
        self.attn = nn.MultiheadAttention(dim, m.heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Linear(dim, n_cam * self.out_shape[1]))

    @torch.no_grad()
    def future_latent(self, net, future: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N_cam, K*2) keypoints (x, y in [-1, 1]) of the future frames, moved by `offsets` (B, N_cam, 2), the
        shift augmentation gave the current frames; or, without keypoints, (B, N_cam, C) standardised pooled
        features."""
        if self.keypoints:
            points = net.image_features(future, keypoints=True).keypoints.float()  # (B, N, K, 2)
            if offsets is not None:
                points = points + offsets[:, :, None, :].float()
            return points.flatten(2)
        pooled = net.vision(future.flatten(0, 1).float() / 255.0).mean(1).float()  # (B*N, C)
        return F.layer_norm(pooled, pooled.shape[-1:]).unflatten(0, future.shape[:2])

    def predict(self, net, memory: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Fused tokens (B, T, D) with their mask (B, 1, 1, T) and actions (B, H, D_a) in robot units -> the
        predicted future latent (B, N_cam, *)."""
        q = self.query + self.actions_in(net.action_norm(actions.float()).flatten(1))[:, None]
        pooled, _ = self.attn(q, memory, memory, key_padding_mask=~mask[:, 0, 0], need_weights=False)
        return self.out(pooled[:, 0]).view(-1, *self.out_shape)

    def losses(self, net, feats, batch: TrainBatch, fused=None) -> dict[str, torch.Tensor]:
        future = batch.extras.get("future_images")
        if future is None or fused is None:
            return {}
        memory, mask = fused
        target = self.future_latent(net, future, batch.image_offsets)
        return {"world_model": F.mse_loss(self.predict(net, memory, mask, batch.actions).float(), target)}
