"""Camera encoders: spatial-softmax keypoints locate a small bright marker; the keypoint token is optional."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.model.vision import ResNetGN, SpatialSoftmax


@pytest.mark.parametrize(("row", "col"), [(3, 5), (20, 28), (31, 0)])
def test_spatial_softmax_returns_the_position_of_a_peak(row, col):
    ss = SpatialSoftmax(channels=2, keypoints=1)
    with torch.no_grad():
        ss.heatmaps.weight.zero_()
        ss.heatmaps.weight[0, 1] = 50.0  # the keypoint fires on channel 1 only
        ss.heatmaps.bias.zero_()
    f = torch.zeros(1, 2, 32, 32)
    f[0, 0] = torch.rand(32, 32)  # clutter on the other channel is ignored
    f[0, 1, row, col] = 1.0  # a one-pixel marker
    x, y = ss(f)[0, 0].tolist()
    assert x == pytest.approx(-1 + 2 * col / 31, abs=0.02) and y == pytest.approx(-1 + 2 * row / 31, abs=0.02)


def test_keypoint_image_coordinates_follow_pixel_edges_at_any_stride():
    # a peak on feature (row 3, col 5) of a 32 x 32 map from a 64-px image covers pixels 10-11 and 6-7
    pts = torch.tensor([[[-1 + 2 * 5 / 31, -1 + 2 * 3 / 31]]])
    u, v = SpatialSoftmax.to_image(pts, 32, 32)[0, 0].tolist()
    assert u == pytest.approx((11 / 64) * 2 - 1) and v == pytest.approx((7 / 64) * 2 - 1)


@pytest.mark.parametrize("source", ["stem", "block", "branch"])
def test_encoder_returns_keypoints_in_image_coordinates(source):
    enc = ResNetGN((16, 32), 1, keypoints=4, keypoint_source=source)
    x = torch.rand(2, 3, 64, 64)
    tokens, points, logits = enc(x, with_keypoints=True)
    assert torch.equal(tokens, enc(x)) and points.shape == (2, 4, 2) and points.abs().max() <= 1
    assert logits.shape == (2, 4, 32, 32)


def test_keypoints_add_one_token_per_camera_and_get_gradients():
    enc = ResNetGN((16, 32, 64, 128), 1, keypoints=8)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    tokens = enc(x)
    assert tokens.shape == (2, 4 * 4 + 1, 128)
    tokens[:, -1].sum().backward()
    assert enc.keypoints.heatmaps.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_policy_with_keypoints_runs_and_round_trips(tmp_path):
    itf = RobotInterface(cameras=["a", "b"], image_size=(64, 64), state_names=["s0"], action_names=["a0", "a1"],
                         chunk_size=4)
    policy = RFMPolicy.build("tiny", interface=itf, vision_keypoints=8)
    images = np.random.default_rng(0).integers(0, 256, (1, 2, 3, 64, 64), dtype=np.uint8)
    state = np.zeros((1, 1), np.float32)
    out = policy.predict(images, state, ["reach the goal"])
    policy.save_pretrained(tmp_path / "ckpt")
    again = RFMPolicy.from_pretrained(tmp_path / "ckpt").predict(images, state, ["reach the goal"])
    np.testing.assert_allclose(out, again, atol=1e-6)
