"""Keypoints seen by several calibrated cameras -> 3-D points in the world frame, as one policy token.

A policy told where the goal is in two images must still learn, from a few dozen demonstrations, the division
that turns two pixel positions into a height: with keypoints that found reach's goal to 7 mm, the policy's first
vertical action still correlated only 0.37 with the expert's. Triangulating with the
cameras' recorded projections does that geometry in closed form, in the robot state's frame, so goal minus hand
is one linear layer away. A weighted least-squares solve of a 3 x 3 system per point, written out (adjugate over
determinant) so it exports to ONNX as elementwise ops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rfm.model.normalize import Normalizer

RELATIVE_SCALE = 0.1  # metres per unit of relative_points' offsets: table-top offsets come out a few units
RIDGE = 1e-3  # pull toward the workspace centre, relative to the system's scale: keeps near-parallel rays finite


def camera_centres(projections: np.ndarray) -> np.ndarray:
    """(N, 3, 4) projections -> (N, 3) camera centres in the world frame (the null space of each P)."""
    return np.stack([-np.linalg.solve(p[:, :3], p[:, 3]) for p in np.asarray(projections, np.float64)])


def workspace_frame(projections: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, scale): the point nearest every camera's optical axis (where the cameras look) and half the mean
    distance from the cameras to it. Normalises triangulated points from the calibration alone, no dataset stats."""
    proj = np.asarray(projections, np.float64)
    if len(proj) < 2:
        raise ValueError(f"triangulation needs at least two cameras, got {len(proj)}")
    rows = np.concatenate([proj[:, 0], proj[:, 1]])  # image centre (u, v) = (0, 0): P1 . X = 0, P2 . X = 0
    centre = np.linalg.lstsq(rows[:, :3], -rows[:, 3], rcond=None)[0]
    scale = 0.5 * float(np.linalg.norm(camera_centres(proj) - centre, axis=1).mean())
    return centre, scale


def _solve3(m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve m x = b for (..., 3, 3) symmetric positive-definite m and (..., 3) b, by the adjugate."""
    r0, r1, r2 = m[..., 0, :], m[..., 1, :], m[..., 2, :]

    def cross(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # torch.linalg.cross has no ONNX export
        a0, a1, a2 = a.unbind(-1)
        c0, c1, c2 = c.unbind(-1)
        return torch.stack([a1 * c2 - a2 * c1, a2 * c0 - a0 * c2, a0 * c1 - a1 * c0], dim=-1)

    adj = torch.stack([cross(r1, r2), cross(r2, r0), cross(r0, r1)], dim=-2)  # (..., 3, 3), rows of adj(m)
    det = (r0 * adj[..., 0, :]).sum(-1, keepdim=True)
    return (adj * b[..., None, :]).sum(-1) / det


def triangulate(uv: torch.Tensor, weights: torch.Tensor, projections: torch.Tensor, prior: torch.Tensor,
                ridge: float = RIDGE) -> torch.Tensor:
    """uv (B, N, P, 2) normalised image coordinates, weights (B, N, P) >= 0, projections (N, 3, 4), prior (3,)
    -> (B, P, 3) world points minimising the weighted algebraic error, with a small ridge toward `prior`.

    Camera n sees X at (u, v) when (u P3 - P1) . [X, 1] = 0 and (v P3 - P2) . [X, 1] = 0: two rows per camera.
    """
    p = projections.float()
    rows = uv.float()[..., None] * p[None, :, None, 2:3, :] - p[None, :, None, :2, :]  # (B, N, P, 2, 4)
    a, c = rows[..., :3], rows[..., 3]  # a . X = -c
    w = weights.float()[..., None, None]  # (B, N, P, 1, 1): both rows of a camera
    ata = (w[..., None] * a[..., :, None] * a[..., None, :]).sum(dim=(1, 3))  # (B, P, 3, 3)
    atb = -(w * a * c[..., None]).sum(dim=(1, 3))  # (B, P, 3)
    # scaled to unit mean diagonal (entries and determinant near 1, also in an fp16 graph); no weight: the prior
    norm = (ata.diagonal(dim1=-2, dim2=-1).sum(-1) / 3).clamp_min(1e-9)[..., None]  # (B, P, 1)
    eye = torch.eye(3, device=uv.device, dtype=ata.dtype)
    return _solve3(ata / norm[..., None] + ridge * eye, atb / norm + ridge * prior.float())


class PointToken(nn.Module):
    """Spatial-softmax keypoints of every camera -> one token: the first `points` keypoints triangulated into the
    world frame and normalised, with each camera's heatmap spread and the normalised robot state.

    The state is an input so that the offsets that matter (goal minus hand) are linear in the token's inputs.
    A camera's rows are weighted by how peaked its heatmap is: a keypoint a camera has lost (blurry heatmap)
    moves the point less. The points are normalised like the state (`set_stats` with the environment state's
    stats: point p is environment point p); the cameras' workspace frame is only the fallback. Measured: normalised
    by the workspace (0.7 m) reach's goals spanned +-0.2 and after 2,000 steps the policy's actions did not move
    when the goal did.
    """

    int8_float = True  # int8 exports keep it float: metric goal-minus-hand offsets are a few 8-bit steps wide

    def __init__(self, projections: list | np.ndarray, points: int, state_dim: int, dim: int,
                 ee_indices: list[int] | None = None) -> None:
        super().__init__()
        proj = np.asarray(projections, np.float32)
        centre, scale = workspace_frame(proj)
        self.points = points
        self.register_buffer("projections", torch.from_numpy(proj), persistent=False)  # from the config, not weights
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32), persistent=False)
        self.norm = Normalizer(3 * points)  # saved with the weights: a fine-tune keeps the frame it learned in
        self.norm.offset.copy_(torch.tensor(centre, dtype=torch.float32).repeat(points))
        self.norm.scale.fill_(scale)
        n_in = points * 3 + len(proj) * points + state_dim
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim))
        # relative: each point minus the hand and minus each other point, in RELATIVE_SCALE units; a separate branch
        # whose output layer starts at zero, so adding it to a trained token changes nothing until it learns
        self.relative = None
        self.ee_indices = list(ee_indices) if ee_indices else None  # where the end effector's x, y, z sit in the state
        if self.ee_indices:
            n_rel = 3 * points + 3 * points * (points - 1) // 2
            self.relative = nn.Sequential(nn.Linear(n_rel, dim), nn.GELU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.relative[2].weight)
            nn.init.zeros_(self.relative[2].bias)

    def set_stats(self, stats: dict | None) -> None:
        """Normalise point p by the stats of environment-state point p (mean_std), when they cover the points."""
        if stats and len(stats.get("mean", [])) >= 3 * self.points:
            part = {k: np.asarray(stats[k]).reshape(-1)[:3 * self.points] for k in ("mean", "std")}
            self.norm.set_stats(part, "mean_std")

    def world_points(self, uv: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uv (B, N, K, 2) image coordinates and logits (B, N, K, h, w) of the keypoints -> world points (B, P, 3)
        of the first P keypoints and their heatmaps' spread (B, N, P), in heatmap cells squared."""
        uv, logits = uv[:, :, :self.points], logits[:, :, :self.points].float()
        h, w = logits.shape[-2:]
        prob = torch.softmax(logits.flatten(-2), dim=-1)  # (B, N, P, h*w)
        ys = torch.arange(h, device=logits.device, dtype=prob.dtype)
        xs = torch.arange(w, device=logits.device, dtype=prob.dtype)
        grid = torch.stack([xs.repeat(h), ys.repeat_interleave(w)], dim=-1)  # (h*w, 2) in cells
        mean = prob @ grid  # (B, N, P, 2)
        # centred, not E[x^2] - E[x]^2: that cancels ~4,000 against ~4,000 and ONNX Runtime's summation order then
        # moved the spread (and the actions, by up to 6e-3) away from PyTorch's
        spread = (prob[..., None] * (grid - mean[..., None, :]).square()).sum(dim=(-2, -1))  # (B, N, P)
        weights = 1.0 / (spread + 1.0)  # a peak of about one cell weighs ~1; a lost keypoint, little
        return triangulate(uv, weights, self.projections, self.centre), spread

    def forward(self, uv: torch.Tensor, logits: torch.Tensor, nstate: torch.Tensor | None,
                offsets: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                state: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, 1, D). offsets (B, N, 2): how far training's random shift moved each image (normalised
        coordinates); the keypoints moved with it, and the triangulation must undo that. shift (B, 3): training's
        scene shift, added to every point (the state was moved by it already). Both None when serving.
        state (B, S): the raw robot state, holding the end effector's position at `ee_indices` (with `relative`)."""
        if offsets is not None:
            uv = uv - offsets[:, :, None, :].to(uv.dtype)
        points, spread = self.world_points(uv, logits)
        if shift is not None:
            points = points + shift[:, None, :].to(points.dtype)
        parts = [self.norm(points.flatten(1)), torch.log1p(spread).flatten(1)]
        if nstate is not None:
            parts.append(nstate)
        token = self.mlp(torch.cat(parts, dim=-1).to(self.mlp[0].weight.dtype))
        if self.relative is not None:
            if state is None:
                raise ValueError("relative points need the raw robot state (its end effector position)")
            i = self.ee_indices[0]  # adjacent x, y, z (the usual layout) slice: a Slice in ONNX, not a Gather
            hand = state[:, i:i + 3] if self.ee_indices == [i, i + 1, i + 2] else state[:, self.ee_indices]
            token = token + self.relative(relative_points(points, hand.to(points.dtype)).to(token.dtype))
        return token[:, None]


def relative_points(points: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """points (B, P, 3) and hand (B, 3) in metres -> (B, 3P + 3P(P-1)/2): each point minus the hand, then each
    pair's difference, in RELATIVE_SCALE units. What an action is a function of (reach: goal - hand; push: object -
    hand, then goal - object) does not change when the whole scene moves, so a policy fed these need not have seen
    each place to act there."""
    P = points.shape[1]
    pairs = [points[:, j] - points[:, i] for i in range(P) for j in range(i + 1, P)]  # unrolled: plain ops in ONNX
    return torch.cat([(points - hand[:, None]).flatten(1), *pairs], dim=-1) / RELATIVE_SCALE
