"""The world-model objective (training aid `world_model`): future frames in the windows, a head that reads the
action chunk, and nothing of it in the saved policy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from rfm import RFMPolicy
from rfm.config import ConfigError, RobotInterface
from rfm.train.aids import TrainBatch, available_aids, build_aid
from rfm.train.config import TrainConfig
from rfm.train.loop import train

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def _policy(keypoints: int = 16) -> RFMPolicy:
    itf = RobotInterface(cameras=["front"], image_size=(32, 32), state_names=["x"], action_names=["dx", "dy"],
                         chunk_size=4)
    torch.manual_seed(0)
    return RFMPolicy.build("tiny", interface=itf, vision_keypoints=keypoints, dropout=0.0,
                           stats={"action": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}})


def _aid(policy: RFMPolicy, **opts):
    aid = build_aid("world_model", opts)
    aid.setup(policy, None)
    return aid


def test_the_aid_is_in_the_core_and_checks_its_options():
    assert "world_model" in available_aids()
    with pytest.raises(ConfigError, match="target='pixels': expected one of auto, keypoints, features"):
        build_aid("world_model", {"target": "pixels"})
    with pytest.raises(ConfigError, match="horizon=0: expected a number of control steps >= 1"):
        build_aid("world_model", {"horizon": 0})
    assert build_aid("world_model", {"horizon": 80}).future_steps == 80 and build_aid("world_model", {}).future_steps is None
    with pytest.raises(ConfigError, match="needs a model with keypoints"):
        _aid(_policy(keypoints=0), target="keypoints")
    assert _aid(_policy(keypoints=0)).out_shape == (1, 128)  # pooled features where there are no keypoints


def test_keypoint_targets_move_with_the_shift_the_current_frames_got():
    policy = _policy()
    aid = _aid(policy)
    future = torch.randint(0, 256, (2, 1, 3, 32, 32), dtype=torch.uint8)
    plain = aid.future_latent(policy.net, future)
    moved = aid.future_latent(policy.net, future, torch.tensor([[[0.25, -0.5]], [[0.0, 0.0]]]))
    assert plain.shape == (2, 1, 32)
    assert torch.allclose(moved[0] - plain[0], torch.tensor([0.25, -0.5]).repeat(16)[None], atol=1e-6)
    assert torch.equal(moved[1], plain[1])


@pytest.mark.integration
def test_the_head_learns_what_the_actions_do_to_the_scene():
    """Every sample sees the same observation; its actions say where a square will be H steps later. Only a head
    that reads the action chunk can beat predicting the average future."""
    policy = _policy()
    net, aid = policy.net.eval(), _aid(policy, weight=1.0)
    g = torch.Generator().manual_seed(0)
    B = 32
    actions = torch.rand(B, 4, 2, generator=g) * 2 - 1
    future = torch.zeros(B, 1, 3, 32, 32, dtype=torch.uint8)
    for i, (x, y) in enumerate(((actions[:, 0] + 1) * 12).long().tolist()):
        future[i, 0, :, y:y + 8, x:x + 8] = 255
    text, mask = policy.encode_text(["push"] * B)
    with torch.no_grad():
        memory, fmask = net.encode(torch.zeros(B, 1, 3, 32, 32, dtype=torch.uint8), torch.zeros(B, 1), text, mask)
    batch = TrainBatch(torch.zeros(B, 1, 3, 32, 32), torch.zeros(B, 1), text, mask, actions,
                       torch.zeros(B, 4, dtype=torch.bool), extras={"future_images": future})
    target = aid.future_latent(net, future)
    floor = ((target - target.mean(0)) ** 2).mean().item()  # the loss of predicting the average future
    opt = torch.optim.AdamW(aid.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        loss = aid.losses(net, None, batch, fused=(memory, fmask))["world_model"]
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * floor, (loss.item(), floor)


def test_training_with_it_logs_its_loss_and_leaves_the_policy_alone(tmp_path):
    base = {"dataset": str(FIXTURE), "preset": "tiny", "steps": 4, "batch_size": 8, "chunk_size": 8,
            "image_size": (48, 48), "num_workers": 0, "save_every": 4, "log_every": 2, "warmup_steps": 1, "seed": 3}
    train(TrainConfig(out=str(tmp_path / "wm"), aids={"world_model": {"weight": 0.1}}, **base), progress=False)
    rows = list(csv.DictReader((tmp_path / "wm" / "logs" / "train.csv").read_text().splitlines()))
    assert rows and all(float(r["world_model_loss"]) > 0 for r in rows)
    train(TrainConfig(out=str(tmp_path / "plain"), **base), progress=False)
    with_aid = RFMPolicy.from_pretrained(tmp_path / "wm" / "checkpoint").net.state_dict()
    plain = RFMPolicy.from_pretrained(tmp_path / "plain" / "checkpoint").net.state_dict()
    assert with_aid.keys() == plain.keys()  # the head is the aid's: not in the saved (served, exported) policy
    train(TrainConfig(out=str(tmp_path / "wm"), aids={"world_model": {"weight": 0.1}}, resume=True,
                      **{**base, "steps": 6}), progress=False)  # --resume restores the head with the run
