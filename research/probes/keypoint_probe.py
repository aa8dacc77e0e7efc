"""Do a policy's keypoints find the objects and the goal? Compares them with the simulator's truth on unseen scenes.

For checkpoints trained with `rfm train --keypoint-loss` (keypoint p <- point p of the environment state: object 1,
object 2, goal). For each task and unseen evaluation seed, the scene is reset (optionally the expert drives k steps),
the encoder's keypoints are read per camera and compared with where the point projects (error in pixels at model
resolution), and the two cameras' keypoints are triangulated back to 3-D (error in cm per axis; a model with
`vision_points` reports the points its own token reads, weighted by its heatmaps' spread). The baseline
always answers the task's mean position over the same seeds: near it, the encoder does not localise that thing.

    .venv/bin/python research/probes/keypoint_probe.py --checkpoint runs/X/checkpoint --tasks mt10 --seeds 20
Prints a table and writes research/probes/results/keypoint_probe.json (appended).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scene_probe import append_result, parse_args, read_scenes

from rfm.model.policy import RFMPolicy
from rfm.model.triangulate import triangulate, workspace_frame
from rfm.runtime.observation import make_batch
from rfm.sim.keypoints import keypoint_targets
from rfm.sim.metaworld import EVAL_SEED_BASE, expand_tasks

RESULTS = Path(__file__).parent / "results" / "keypoint_probe.json"
POINTS = {"obj1": 0, "goal": 2}  # obj2 is unused by the MT10 tasks (always zero)


@torch.inference_mode()
def keypoints(policy: RFMPolicy, obs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(N_cam, K, 2) keypoints in normalised image coordinates from one runtime observation, and (P, 3) the world
    points the model's own point token triangulates from them (None without vision_points)."""
    images = torch.from_numpy(make_batch([obs], policy.interface).images)
    _, uv, logits = policy.net.eval().image_tokens(images, with_keypoints=True)
    token = policy.net.point_token
    world = token.world_points(uv, logits)[0][0].numpy() if token is not None else None
    return uv[0].numpy(), world


def triangulated(proj: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(S, N_cam, 2) keypoints of one point in cameras proj (N_cam, 3, 4) -> (S, 3), every camera weighted alike."""
    centre = torch.as_tensor(workspace_frame(proj)[0], dtype=torch.float32)
    uv_t = torch.as_tensor(uv)[:, :, None]  # (S, N_cam, 1, 2)
    return triangulate(uv_t, torch.ones(uv_t.shape[:3]), torch.as_tensor(proj), centre)[:, 0].numpy()


def _pixels(err: np.ndarray, size: int) -> list[float]:
    """(S, N_cam, 2) errors in normalised coordinates -> mean |error| in pixels per camera."""
    return [round(float(v), 2) for v in np.abs(err).mean((0, 2)) * size / 2]


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def probe(checkpoint: str, tasks: list[str], seeds: int, first_seed: int = EVAL_SEED_BASE, k: int = 0) -> dict:
    policy = RFMPolicy.from_pretrained(checkpoint)
    itf = policy.interface
    size = itf.image_size[0]
    out: dict = {"checkpoint": checkpoint, "seeds": seeds, "first_seed": first_seed, "k": k, "tasks": {}}
    for task in tasks:
        reads, truth, proj = read_scenes(task, itf, seeds, first_seed, k, lambda obs: keypoints(policy, obs))
        seen_all = np.stack([r[0] for r in reads])  # (S, N_cam, K, 2)
        # where each point really is in each camera: the same projection the training targets use
        uv_all = keypoint_targets(torch.as_tensor(truth), torch.ones(len(truth), dtype=torch.bool),
                                  torch.as_tensor(proj))[0].numpy()  # (S, N_cam, P, 2)
        row = {}
        for name, p in POINTS.items():
            xyz = truth[:, 3 * p:3 * p + 3]
            if not np.abs(xyz).sum(1).all():
                continue
            seen = seen_all[:, :, p]  # (S, N_cam, 2)
            true_uv = uv_all[:, :, p]
            tri = (np.stack([r[1][p] for r in reads]) if reads[0][1] is not None and p < len(reads[0][1])
                   else triangulated(proj, seen))
            row[name] = {"px": _pixels(seen - true_uv, size), "px_baseline": _pixels(true_uv.mean(0) - true_uv, size),
                         "cm": [round(float(v), 2) for v in np.abs(tri - xyz).mean(0) * 100],
                         "cm_baseline": [round(float(v), 2) for v in np.abs(xyz.mean(0) - xyz).mean(0) * 100]}
        out["tasks"][task] = row
    return out


def main() -> int:
    args = parse_args(__doc__)
    res = probe(args.checkpoint, expand_tasks(args.tasks), args.seeds, args.first_seed, args.k)
    cams = RFMPolicy.from_pretrained(args.checkpoint).interface.cameras
    print(f"{args.checkpoint}: mean |error| over {args.seeds} seeds from {args.first_seed} after {args.k} expert steps; "
          f"pixels per camera ({'/'.join(cams)}), triangulated cm (x/y/z); (baseline: the task's mean position)")
    print(f"{'task':<24} {'point':<5} {'px':>11} {'(base)':>11} {'cm x/y/z':>16} {'(base)':>16}")
    for task, row in res["tasks"].items():
        for name, r in row.items():
            print(f"{task:<24} {name:<5} {_fmt(r['px']):>11} {_fmt(r['px_baseline']):>11} {_fmt(r['cm']):>16} "
                  f"{_fmt(r['cm_baseline']):>16}")
    append_result(RESULTS, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
