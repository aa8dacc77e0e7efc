"""Triangulated keypoints: world points from calibrated cameras, and the policy token built from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfm import RFMPolicy
from rfm.config import ConfigError, RobotInterface
from rfm.model.triangulate import RELATIVE_SCALE, PointToken, relative_points, triangulate, workspace_frame

# two pinhole cameras 2 m from the origin: one looking along +z (u = x / (z + 2), v = y / (z + 2)), one along +x
# (u = z / (x + 2), v = y / (x + 2)); both look at the origin
STEREO = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 2.0]],
                       [[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 2.0]]])


def _project(points: torch.Tensor) -> torch.Tensor:
    """(B, P, 3) -> (B, N, P, 2) normalised image coordinates in STEREO's cameras."""
    homog = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    proj = torch.einsum("nij,bpj->bnpi", STEREO, homog)
    return proj[..., :2] / proj[..., 2:]


def test_triangulation_recovers_world_points_from_two_cameras():
    pts = torch.tensor([[[0.1, -0.2, 0.3], [-0.4, 0.25, 0.0]], [[0.0, 0.0, 0.0], [0.3, 0.3, -0.3]]])
    got = triangulate(_project(pts), torch.ones(2, 2, 2), STEREO, torch.zeros(3))
    torch.testing.assert_close(got, pts, atol=2e-3, rtol=0)  # the ridge toward the prior costs under 2 mm


def test_a_camera_with_little_weight_cannot_pull_the_point_off_the_trusted_ray():
    pts = torch.tensor([[[0.2, 0.1, -0.1]]])
    uv = _project(pts)
    uv[:, 1] += 0.2  # camera 1 is wrong about where the point is
    even = triangulate(uv, torch.ones(1, 2, 1), STEREO, torch.zeros(3))
    trusted = triangulate(uv, torch.tensor([[[1.0], [0.01]]]), STEREO, torch.zeros(3))
    # camera 0 still sees the point where it is; only the depth along its ray is camera 1's to say
    off_ray = (_project(trusted)[:, 0] - uv[:, 0]).norm()
    assert off_ray < 0.1 * (_project(even)[:, 0] - uv[:, 0]).norm() and off_ray < 0.01
    # with no weight anywhere the answer is the prior, not a division by zero
    prior = torch.tensor([0.5, 0.5, 0.5])
    torch.testing.assert_close(triangulate(uv, torch.zeros(1, 2, 1), STEREO, prior)[0, 0], prior)


def test_workspace_frame_is_where_the_cameras_look():
    centre, scale = workspace_frame(STEREO.numpy())
    np.testing.assert_allclose(centre, [0, 0, 0], atol=1e-9)
    assert scale == pytest.approx(1.0)  # half the 2 m from each camera to it
    with pytest.raises(ValueError, match="at least two cameras"):
        workspace_frame(STEREO.numpy()[:1])


def _peaked_logits(uv: torch.Tensor, h: int = 16, w: int = 16) -> torch.Tensor:
    """Heatmap logits (B, N, K, h, w) peaked at the cell under each (u, v)."""
    col = ((uv[..., 0] + 1) / 2 * w).long().clamp(0, w - 1)
    row = ((uv[..., 1] + 1) / 2 * h).long().clamp(0, h - 1)
    logits = torch.full((*uv.shape[:-1], h, w), -50.0)
    logits.view(-1, h * w)[torch.arange(col.numel()), (row * w + col).flatten()] = 50.0
    return logits


def test_point_token_undoes_the_training_shift():
    tok = PointToken(STEREO, points=1, state_dim=0, dim=8)
    pts = torch.tensor([[[0.1, 0.2, -0.1]]])
    uv = _project(pts)
    shift = torch.tensor([[[0.1, -0.05], [0.0, 0.08]]])  # (B, N, 2): the augmentation moved both images
    seen = uv + shift[:, :, None]
    logits = _peaked_logits(uv)
    moved, _ = tok.world_points(seen, logits)
    undone, spread = tok.world_points(seen - shift[:, :, None], logits)
    torch.testing.assert_close(undone, pts, atol=2e-3, rtol=0)
    assert (moved - pts).norm() > 0.05 and spread.max() < 0.1  # peaked heatmaps: spread well under a cell


CALIBRATION = {"a": {"projection": STEREO[0].tolist()}, "b": {"projection": STEREO[1].tolist()}}


def _interface(**kw) -> RobotInterface:
    """Two calibrated cameras (by name) and a state that is the end effector's position."""
    base = {"cameras": ["a", "b"], "image_size": (32, 32), "state_names": ["x", "y", "z"],
            "action_names": ["dx", "dy", "dz"], "chunk_size": 4, "calibration": CALIBRATION,
            "ee_position": ["x", "y", "z"]}
    return RobotInterface(**{**base, **kw})


def test_policy_with_points_round_trips_with_its_calibration_and_point_frame(tmp_path):
    env_stats = {"mean": [0.1, 0.2, 0.3, 0.0, 0.0, 0.0, -0.1, 0.6, 0.15], "std": [0.05] * 6 + [0.1, 0.02, 0.07]}
    stats = {"observation.environment_state": env_stats}
    pointed = RFMPolicy.build("tiny", interface=_interface(), vision_keypoints=4, vision_points=3, stats=stats)
    norm = pointed.net.point_token.norm  # point p is normalised like environment point p
    np.testing.assert_allclose(norm.offset.numpy(), env_stats["mean"], atol=1e-7)
    np.testing.assert_allclose(norm.scale.numpy(), [0.05] * 6 + [0.1, 0.02, 0.07], atol=1e-7)
    images = np.random.default_rng(0).integers(0, 256, (2, 2, 3, 32, 32), dtype=np.uint8)
    state = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    out = pointed.predict(images, state, ["reach"] * 2)
    pointed.save_pretrained(tmp_path / "ckpt")  # the calibration travels in config.json, the frame in the weights
    again = RFMPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.config.interface.calibration == CALIBRATION
    np.testing.assert_allclose(again.predict(images, state, ["reach"] * 2), out, atol=1e-6)
    # stats without an environment state (field data) leave the points' frame as it was
    again.set_stats({"action": {"mean": [0.0] * 3, "std": [1.0] * 3}})
    np.testing.assert_allclose(again.net.point_token.norm.offset.numpy(), env_stats["mean"], atol=1e-7)
    # without any stats the frame is the cameras' workspace: where they look, in units of their distance
    bare = RFMPolicy.build("tiny", interface=_interface(), vision_keypoints=4, vision_points=1)
    np.testing.assert_allclose(bare.net.point_token.norm.offset.numpy(), [0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(bare.net.point_token.norm.scale.numpy(), [1, 1, 1], atol=1e-6)


def test_points_get_gradients_through_the_keypoints():
    torch.manual_seed(0)
    net = RFMPolicy.build("tiny", interface=_interface(), vision_keypoints=4, vision_points=2).net
    images = torch.randint(0, 256, (2, 2, 3, 32, 32), dtype=torch.uint8)
    memory, mask = net.fuse(net.image_features(images), torch.zeros(2, 3), torch.randn(2, 24, 384),
                            torch.ones(2, 24, dtype=torch.bool), image_offsets=torch.zeros(2, 2, 2))
    net.action_loss(memory, mask, torch.randn(2, 4, 3)).backward()
    assert net.point_token.mlp[0].weight.grad.abs().sum() > 0
    assert net.vision.keypoints.heatmaps.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("itf, kw, pattern", [
    ({"calibration": None}, {"vision_points": 2}, "interface.calibration.*a calibration for every camera"),
    ({"calibration": {"a": CALIBRATION["a"]}}, {"vision_points": 2}, r"interface.calibration=\['a'\]"),
    ({}, {"vision_points": 5}, r"vision_points=5.*\[0, model.vision_keypoints=4\]"),
    ({"calibration": {"a": {"projection": STEREO[0, :2].tolist()}}}, {}, "calibration.a.projection.*3 x 4"),
    ({"calibration": {"c": CALIBRATION["a"]}}, {}, "interface.calibration names camera 'c'.*not in interface.cameras"),
    ({"calibration": {"a": {"intrinsics": np.eye(3).tolist(), "extrinsics": STEREO[0].tolist()}}}, {},
     "native frame size in interface.native_sizes.a"),
    ({"ee_position": ["x", "y"]}, {}, "interface.ee_position.*three names"),
    ({}, {"relative_points": True}, "relative_points=True.*vision_points > 0"),
    ({"ee_position": None}, {"vision_points": 2, "relative_points": True}, "relative_points=True.*ee_position"),
])
def test_bad_geometry_names_the_field(itf, kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RFMPolicy.build("tiny", interface=_interface(**itf), vision_keypoints=4, **kw)


def test_pixel_calibration_and_aspect_give_the_model_inputs_projection():
    """OpenCV intrinsics in pixels of a 480 x 640 frame, the frame stretched, padded or cropped to 96 x 96: the
    projection maps a world point to where it lands in the model's input."""
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])  # principal point at the frame's centre
    E = np.hstack([np.eye(3), [[0.0], [0.0], [2.0]]])  # camera 2 m in front of the origin, looking along +z
    point = np.array([0.3, -0.2, 0.0, 1.0])
    px = K @ E @ point
    u, v = px[:2] / px[2]  # pixel (col, row) in the native frame: (394.5, 189.5)
    native_uv = np.array([(u + 0.5) / 640 * 2 - 1, (v + 0.5) / 480 * 2 - 1])
    for aspect, expect in (("resize", native_uv), ("pad", native_uv * [1, 0.75]), ("crop", native_uv * [4 / 3, 1])):
        itf = _interface(native_sizes={"a": (480, 640), "b": (480, 640)}, aspect=aspect, image_size=(96, 96),
                         calibration={c: {"intrinsics": K.tolist(), "extrinsics": E.tolist()} for c in "ab"})
        p = itf.projections()[0] @ point
        np.testing.assert_allclose(p[:2] / p[2], expect, atol=1e-9)


def test_heatmap_spread_is_exact_far_from_the_origin():
    """The spread is a centred second moment: E[x^2] - E[x]^2 would cancel ~4,000 against ~4,000 at cell 60 of a
    64-cell map, and ONNX Runtime's summation order then moved it (and the actions) away from PyTorch's."""
    tok = PointToken(STEREO, points=1, state_dim=0, dim=8)
    logits = torch.full((1, 2, 1, 64, 64), -30.0)
    logits[..., 60, 60], logits[..., 60, 61] = 0.0, -0.5  # two neighbouring cells share the mass
    _, spread = tok.world_points(torch.zeros(1, 2, 1, 2), logits)
    p = torch.softmax(logits[0, 0, 0].double().flatten(), -1).view(64, 64)
    ys, xs = torch.meshgrid(torch.arange(64.0).double(), torch.arange(64.0).double(), indexing="ij")
    mx, my = (p * xs).sum(), (p * ys).sum()
    exact = (p * ((xs - mx) ** 2 + (ys - my) ** 2)).sum()
    torch.testing.assert_close(spread[0, 0, 0].double(), exact, atol=1e-6, rtol=1e-5)


def test_scene_shift_moves_every_triangulated_point_by_the_same_offset():
    token = PointToken(STEREO, points=2, state_dim=3, dim=16)
    n_in = token.mlp[0].in_features  # read the token's inputs (normalised points, spreads, state) through an identity
    token.mlp = torch.nn.Sequential(torch.nn.Linear(n_in, n_in))
    with torch.no_grad():
        token.mlp[0].weight.copy_(torch.eye(n_in))
        token.mlp[0].bias.zero_()
    pts = torch.tensor([[[0.1, -0.2, 0.3], [-0.4, 0.25, 0.0]]])
    uv, logits = _project(pts), torch.zeros(1, 2, 2, 4, 4)
    shift = torch.tensor([[0.05, -0.02, 0.01]])
    plain, shifted = token(uv, logits, torch.zeros(1, 3))[0, 0], token(uv, logits, torch.zeros(1, 3), shift=shift)[0, 0]
    scale = token.norm.scale[:3]
    torch.testing.assert_close((shifted - plain)[:6], (shift / scale).repeat(1, 2)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted[6:], plain[6:])  # spreads and state as they were


def test_relative_points_are_offsets_that_a_moved_scene_leaves_alone():
    pts = torch.tensor([[[0.1, 0.6, 0.05], [0.0, 0.0, 0.0], [-0.1, 0.8, 0.25]]])  # object, absent object, goal
    hand = torch.tensor([[0.0, 0.6, 0.2]])
    rel = relative_points(pts, hand) * RELATIVE_SCALE
    assert rel.shape == (1, 9 + 9)  # three points minus the hand, then the three pairs (0-1, 0-2, 1-2)
    torch.testing.assert_close(rel[0, 6:9], torch.tensor([-0.1, 0.2, 0.05]))  # goal - hand
    torch.testing.assert_close(rel[0, 12:15], torch.tensor([-0.2, 0.2, 0.2]))  # goal - object
    moved = torch.tensor([0.07, -0.03, 0.02])
    torch.testing.assert_close(relative_points(pts + moved, hand + moved), relative_points(pts, hand))


def test_relative_points_join_a_trained_policy_without_changing_it():
    """The relative branch's output layer starts at zero: a fine-tune that adds it (`--init` a checkpoint without
    it) starts from the checkpoint's actions, and training reaches the branch."""
    torch.manual_seed(0)
    kw = {"interface": _interface(), "vision_keypoints": 4, "vision_points": 2}
    plain = RFMPolicy.build("tiny", **kw)
    rel = RFMPolicy.build("tiny", relative_points=True, **kw)
    missing, unexpected = rel.net.load_state_dict(plain.net.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("point_token.relative.") for k in missing)
    images = np.random.default_rng(0).integers(0, 256, (2, 2, 3, 32, 32), dtype=np.uint8)
    state = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(rel.predict(images, state, ["reach"] * 2), plain.predict(images, state, ["reach"] * 2),
                               atol=1e-6)
    rel.net.loss(torch.from_numpy(images), torch.from_numpy(state), torch.randn(2, 24, 384),
                 torch.ones(2, 24, dtype=torch.bool), torch.randn(2, 4, 3)).backward()
    assert rel.net.point_token.relative[2].weight.grad.abs().sum() > 0
