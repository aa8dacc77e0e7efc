"""Keypoint targets: where the simulator's objects and goal appear in each camera, for the spatial-softmax keypoints.

The default cameras determine reach's goal in 3-D (bench/goal_geometry.py), yet a policy trained on actions alone
does not learn to find a goal marker of ten pixels. Telling keypoint p where point p of the environment state
(object 1, object 2, goal) is in every camera teaches the encoder to find it; the policy then reads the positions
from the keypoint token it already has. Training only: the served and exported graphs are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from rfm.constants import OBS_ENV_STATE


def dataset_projections(datasets: list, cameras: list[str]) -> np.ndarray:
    """(N_cam, 3, 4) camera projections recorded with the environment state (rfm data generate), in `cameras`' order.

    Every dataset that records them must agree (same simulated cameras); a clear error when none records them.
    """
    found, source = None, None
    for ds in datasets:
        proj = ds.features.get(OBS_ENV_STATE, {}).get("info", {}).get("camera_projection")
        if proj is None:
            continue
        missing = [c for c in cameras if c not in proj]
        if missing:
            raise ValueError(f"dataset {ds.root}: features.{OBS_ENV_STATE}.info.camera_projection has no camera "
                             f"{', '.join(missing)} (it has {', '.join(proj)})")
        mats = np.asarray([proj[c] for c in cameras], dtype=np.float32)
        if mats.shape[1:] != (3, 4):
            raise ValueError(f"dataset {ds.root}: features.{OBS_ENV_STATE}.info.camera_projection: expected a 3 x 4 "
                             f"matrix per camera, got shape {list(mats.shape[1:])}")
        if found is None:
            found, source = mats, ds.root
        elif not np.allclose(found, mats, atol=1e-4):
            raise ValueError(f"datasets {source} and {ds.root} record different camera projections; keypoint "
                             f"targets need the same cameras")
    if found is None:
        raise ValueError(f"keypoint targets and model.vision_points need camera projections in "
                         f"features.{OBS_ENV_STATE}.info.camera_projection of at least one dataset, and none of {', '.join(str(ds.root) for ds in datasets)} has them "
                         f"(rfm data generate metaworld records them)")
    return found


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
