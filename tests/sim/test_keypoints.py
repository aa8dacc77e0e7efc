"""Keypoint targets: simulator points projected into each (shifted) camera image, and the loss that uses them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.sim.keypoints import heatmap_loss, keypoint_targets
from rfm.train.aids import TrainBatch, build_aid
from rfm.train.augment import random_shift

# a pinhole camera at the origin looking down +z (u = x / z, v = y / z), and one that sees everything at half scale
PROJ = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]],
                     [[0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]]])


def test_targets_project_points_and_mark_what_no_camera_can_show():
    env = torch.tensor([[0.2, -0.4, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 1.0],  # point 2 is off camera 0's image (u = 3)
                        [0.1, 0.1, -1.0, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0]])  # point 0 is behind both cameras
    uv, valid = keypoint_targets(env, torch.tensor([True, True]), PROJ)
    assert uv.shape == (2, 2, 3, 2)
    np.testing.assert_allclose(uv[0, 0, 0], [0.1, -0.2], atol=1e-6)
    np.testing.assert_allclose(uv[0, 1, 2], [1.5, 0.0], atol=1e-6)
    assert valid.tolist() == [[[True, False, False], [True, False, False]],  # all-zero point 1: "no such object"
                              [[False, True, True], [False, True, True]]]
    _, none = keypoint_targets(env, torch.tensor([False, True]), PROJ)  # no environment state recorded
    assert not none[0].any() and none[1].equal(valid[1])


def test_targets_move_with_the_image_shift():
    torch.manual_seed(0)
    H = W = 32
    img = torch.zeros(64, 1, 3, H, W)
    img[:, :, :, 10, 20] = 255.0  # one bright pixel: centre at u = (20.5 / 32) * 2 - 1, v = (10.5 / 32) * 2 - 1
    out, offsets = random_shift(img, 4, with_offsets=True)
    assert offsets.abs().max() > 0
    for b in range(64):
        rows, cols = torch.nonzero(out[b, 0, 0] > 128, as_tuple=True)
        assert len(rows) == 1
        seen = torch.tensor([(cols[0] + 0.5) / W * 2 - 1, (rows[0] + 0.5) / H * 2 - 1])
        torch.testing.assert_close(seen, torch.tensor([20.5 / 16 - 1, 10.5 / 16 - 1]) + offsets[b, 0])


def test_keypoint_aid_pulls_keypoints_to_their_targets_and_ignores_invalid_ones():
    proj = {c: {"projection": PROJ[i].tolist()} for i, c in enumerate("ab")}
    itf = RobotInterface(cameras=["a", "b"], image_size=(32, 32), state_names=["s0"], action_names=["a0"],
                         chunk_size=2, calibration=proj)
    policy = RFMPolicy.build("tiny", interface=itf, vision_keypoints=4, vision_keypoint_source="block")
    aid = build_aid("keypoints", {"weight": 1.0})
    aid.setup(policy, SimpleNamespace(feature_dims={"observation.environment_state": 9}))
    images = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    batch = TrainBatch(images, torch.zeros(2, 1), torch.zeros(2, 24, 384), torch.ones(2, 24, dtype=torch.bool),
                       torch.zeros(2, 2, 1), torch.zeros(2, 2, dtype=torch.bool))
    feats = policy.net.image_features(images, keypoints=True)
    env = torch.tensor([[0.2, -0.4, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 1.0]] * 2)
    none = batch.replace(extras={"env_state": env, "env_valid": torch.tensor([False, False])})
    assert aid.losses(policy.net, feats, none)["keypoints"] == 0  # no sample records an environment state
    some = batch.replace(extras={"env_state": env, "env_valid": torch.tensor([True, False])})
    loss = aid.losses(policy.net, feats, some)["keypoints"]
    loss.backward()
    assert loss > 0 and policy.net.vision.keypoints.heatmaps.weight.grad.abs().sum() > 0
    assert aid.losses(policy.net, feats, batch) == {}  # batches without environment state: no keypoint loss
    with pytest.raises(ValueError, match="vision_keypoints >= 5"):
        heatmap_loss(feats.logits, torch.zeros(2, 2, 5, 2), torch.ones(2, 2, 5, dtype=torch.bool))


def test_heatmap_loss_is_lowest_for_a_peak_on_the_target():
    h = w = 16
    target = torch.tensor([[[[0.25, -0.5]]]])  # (B, N, P, 2): cell x = 0.625 * 16 - 0.5 = 9.5, y = 3.5
    valid = torch.ones(1, 1, 1, dtype=torch.bool)

    def peak(row: float, col: float) -> torch.Tensor:  # a Gaussian bump of one cell's width (keypoint 0 only)
        ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        logits = torch.zeros(1, 1, 2, h, w)
        logits[0, 0, 0] = -((ys - row) ** 2 + (xs - col) ** 2) / 2
        return logits

    on, off = heatmap_loss(peak(3.5, 9.5), target, valid), heatmap_loss(peak(12, 2), target, valid)
    assert on < 1e-4 and off > 10 and heatmap_loss(peak(12, 2), target, ~valid) == 0
    uniform = heatmap_loss(torch.zeros(1, 1, 2, h, w), target, valid)
    assert on < uniform < off
