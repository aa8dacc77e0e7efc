"""Keypoint targets: where the simulator's objects and goal appear in each camera, for the spatial-softmax keypoints.

The default cameras determine reach's goal in 3-D, yet a policy trained on actions alone
does not learn to find a goal marker of ten pixels. Telling keypoint p where point p of the environment state
(object 1, object 2, goal) is in every camera teaches the encoder to find it; the policy then reads the positions
from the keypoint token it already has. Training only: the served and exported graphs are unchanged.
"""

from __future__ import annotations

import torch


def keypoint_targets(env_state: torch.Tensor, env_valid: torch.Tensor, projections: torch.Tensor,
                     offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """env_state (B, 3P) xyz triples, env_valid (B,), projections (N, 3, 4), offsets (B, N, 2) from the image shift
    -> targets (B, N, P, 2) in normalised image coordinates and valid (B, N, P).

    Invalid: samples without an environment state, all-zero points (Meta-World's "no such object"), points behind a
    camera or outside its (shifted) image.
    """
    B = env_state.shape[0]
    pts = env_state.float().view(B, -1, 3)  # (B, P, 3)
    homog = torch.cat([pts, torch.ones_like(pts[..., :1])], dim=-1)  # (B, P, 4)
    proj = torch.einsum("nij,bpj->bnpi", projections.float(), homog)  # (B, N, P, 3)
    depth = proj[..., 2]
    uv = proj[..., :2] / depth.clamp_min(1e-6)[..., None]
    if offsets is not None:
        uv = uv + offsets[:, :, None, :].float()
    present = pts.abs().sum(-1) > 0  # (B, P)
    valid = env_valid.bool()[:, None, None] & present[:, None, :] & (depth > 0) & (uv.abs() <= 1).all(-1)
    return uv, valid


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """KL(target || softmax(heatmap)) of keypoint p's heatmap against a Gaussian (sigma in heatmap cells) at target p.

    logits (B, N, K, h, w); targets (B, N, P, 2) in normalised image coordinates, P <= K; valid (B, N, P).
    A loss on the heatmap itself, not on its expected position: an L1 on the expectation only moves its mean, and
    the keypoints then settle on a blurry average at the task's mean position whatever the scene.
    """
    n, (h, w) = targets.shape[2], logits.shape[-2:]
    if logits.shape[2] < n:
        raise ValueError(f"{n} keypoint targets need model.vision_keypoints >= {n} (it is {logits.shape[2]})")
    cells = ((targets.float() + 1) / 2 * targets.new_tensor([w, h]) - 0.5)  # (B, N, P, 2) in cell units (x, y)
    xs = torch.arange(w, device=logits.device, dtype=torch.float32)
    ys = torch.arange(h, device=logits.device, dtype=torch.float32)
    gx = -((xs - cells[..., :1]) ** 2) / (2 * sigma**2)  # (B, N, P, w)
    gy = -((ys - cells[..., 1:]) ** 2) / (2 * sigma**2)  # (B, N, P, h)
    target = torch.softmax((gy[..., :, None] + gx[..., None, :]).flatten(-2), dim=-1)  # (B, N, P, h*w)
    log_p = torch.log_softmax(logits[:, :, :n].float().flatten(-2), dim=-1)
    kl = (target * (torch.log(target.clamp_min(1e-12)) - log_p)).sum(-1)  # (B, N, P)
    weight = valid.float()
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)
