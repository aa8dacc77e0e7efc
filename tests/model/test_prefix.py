"""Delay-aware continuation in the network: committed actions condition the chunk, which starts with them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rfm import RFMPolicy
from rfm.train.init import init_from_checkpoint


def _net(interface, prefix_max: int = 4, head: str = "chunk"):
    itf = dataclasses.replace(interface, image_size=(32, 32))
    torch.manual_seed(0)
    stats = {"action": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    return RFMPolicy.build("tiny", interface=itf, head=head, dropout=0.0, prefix_max=prefix_max, stats=stats)


def _obs(policy, b: int):
    text, mask = policy.encode_text(["pick"] * b)
    return torch.zeros(b, 2, 3, 32, 32, dtype=torch.uint8), torch.zeros(b, 3), text, mask


@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_the_chunk_starts_with_the_committed_actions_and_rows_without_are_unchanged(small_interface, head):
    policy = _net(small_interface, head=head)
    net = policy.net.eval()
    obs = _obs(policy, 2)
    noise = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(0))
    prefix = torch.tensor([[[0.5, -0.5], [0.25, 0.75], [9.0, 9.0]], [[0.0, 0.0]] * 3])
    with torch.no_grad():
        out = net(*obs, noise, prefix, torch.tensor([2, 0]))
        alone = net(*[o[1:] for o in obs], noise[1:])
    assert torch.equal(out[0, :2], prefix[0, :2])  # committed actions exactly; the third is past prefix_len
    assert torch.allclose(out[1], alone[0], atol=1e-5)  # a row without committed actions is as if sent alone


def test_a_fresh_prefix_input_does_not_change_a_fine_tuned_checkpoint(small_interface, tmp_path):
    """Zero-initialised: fine-tuning a checkpoint into a continuation model starts from the same behaviour."""
    plain = _net(small_interface, prefix_max=0)
    plain.save_pretrained(tmp_path / "plain")
    prefixed = _net(small_interface, prefix_max=4)
    init_from_checkpoint(prefixed.net, tmp_path / "plain")
    obs = _obs(plain, 1)
    with torch.no_grad():
        a = plain.net.eval()(*obs)
        b = prefixed.net.eval()(*obs, None, torch.full((1, 4, 2), 0.3), torch.tensor([2]))
    assert torch.allclose(a[0, 2:], b[0, 2:], atol=1e-6)


def test_recorded_rows_commit_what_the_robot_executed(small_interface):
    """Training prefixes: a recording's rows commit the executed actions exactly; demonstration rows their own
    actions with small noise."""
    net = _net(small_interface).net
    torch.manual_seed(0)
    labels, executed = torch.randn(64, 8, 2), torch.randn(64, 8, 2) + 5.0
    recorded = torch.arange(64) % 2 == 0
    prefix, committed = net.sample_prefix(labels, None, executed, recorded)
    assert torch.equal(prefix[recorded], executed[recorded])
    assert (prefix[~recorded] - labels[~recorded]).abs().max() < 0.5
    assert committed.sum(1).max() <= 4 and committed.any()


@pytest.mark.integration
def test_the_model_learns_to_continue_from_where_executed_actions_led(small_interface):
    """A recording where the expert's labels after the committed ticks depend on what the robot executed there
    (which the observation does not show): trained on executed prefixes, the model continues from them."""
    policy = _net(small_interface)
    net = policy.net.train()
    obs = _obs(policy, 16)
    g = torch.Generator().manual_seed(0)

    def recording(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        offset = torch.randn(b, 1, 1, generator=g).expand(b, 8, 2)
        return torch.zeros(b, 8, 2) + offset, torch.full((b, 8, 2), -3.0) + offset  # (labels, executed)

    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(250):
        labels, executed = recording(16)
        opt.zero_grad()
        net.loss(*obs, labels, executed=executed, executed_recorded=torch.ones(16, dtype=torch.bool)).backward()
        opt.step()
    net.eval()
    labels, executed = recording(16)
    with torch.no_grad():
        out = net(*obs, None, executed[:, :2], torch.full((16,), 2))
    err = (out[:, 2:] - labels[:, 2:]).abs().mean().item()
    assert err < 0.25 * labels.abs().mean().item(), err


@pytest.mark.integration
def test_the_model_learns_to_continue_what_was_committed(small_interface):
    """Chunks whose offset only the committed actions reveal (the observation is the same for every row): after
    training, the actions after a 2-action prefix follow it; without one the model can only average."""
    policy = _net(small_interface)
    net = policy.net.train()
    obs = _obs(policy, 16)
    g = torch.Generator().manual_seed(0)
    ramp = 0.1 * torch.arange(8.0)[None, :, None]

    def chunks(b: int) -> torch.Tensor:
        return torch.randn(b, 1, 1, generator=g).expand(b, 8, 2) + ramp

    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(250):
        opt.zero_grad()
        net.loss(*obs, chunks(16)).backward()
        opt.step()
    net.eval()
    target = chunks(16)
    with torch.no_grad():
        with_prefix = net(*obs, None, target[:, :2], torch.full((16,), 2))
        without = net(*obs)
    err_with = (with_prefix[:, 2:] - target[:, 2:]).abs().mean().item()
    err_without = (without[:, 2:] - target[:, 2:]).abs().mean().item()
    assert err_with < err_without / 3, (err_with, err_without)
