"""The behaviour model: shapes, determinism, normalisation, learning, and every preset x head."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rfm import RFMPolicy
from rfm.config import PRESETS, RobotInterface


def _inputs(itf: RobotInterface, b: int, seed: int = 0):
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (b, len(itf.cameras), 3, *itf.image_size), dtype=np.uint8)
    state = g.standard_normal((b, itf.state_dim)).astype(np.float32)
    noise = g.standard_normal((b, itf.chunk_size, itf.action_dim)).astype(np.float32)
    return images, state, noise


@pytest.mark.parametrize("head", ["chunk", "flow"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_and_head_gives_chunks_in_robot_units(name, head):
    itf = RobotInterface(cameras=["a", "b"], image_size=(64, 64) if name != "tiny" else (96, 96),
                         state_names=["s0", "s1", "s2"], action_names=["a0", "a1"], chunk_size=4)
    policy = RFMPolicy.build(name, interface=itf, head=head, flow_steps=2)
    images, state, noise = _inputs(itf, 2)
    out = policy.predict(images, state, ["open the drawer", "close the drawer"], noise=noise)
    assert out.shape == (2, 4, 2) and out.dtype == np.float32
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_fixed_noise_is_deterministic_and_noise_matters_for_flow(small_interface, head):
    policy = RFMPolicy.build("tiny", interface=small_interface, head=head)
    images, state, noise = _inputs(small_interface, 3)
    texts = ["a", "b", "c"]
    a = policy.predict(images, state, texts, noise=noise)
    b = policy.predict(images, state, texts, noise=noise)
    np.testing.assert_array_equal(a, b)
    c = policy.predict(images, state, texts, noise=noise + 1.0)
    assert (np.abs(a - c).max() > 0) == (head == "flow")


def test_batch_rows_are_independent(small_interface):
    policy = RFMPolicy.build("tiny", interface=small_interface, head="flow")
    images, state, noise = _inputs(small_interface, 3)
    texts = ["push the block", "reach the goal", "open the door"]
    full = policy.predict(images, state, texts, noise=noise)
    one = policy.predict(images[1:2], state[1:2], texts[1:2], noise=noise[1:2])
    np.testing.assert_allclose(full[1:2], one, atol=1e-5)


def test_instruction_changes_the_action(small_interface):
    policy = RFMPolicy.build("tiny", interface=small_interface)
    images, state, _ = _inputs(small_interface, 1)
    a = policy.predict(images, state, ["open the drawer"])
    b = policy.predict(images, state, ["press the red button"])
    assert np.abs(a - b).max() > 1e-6


def test_stats_denormalise_actions_inside_the_module(small_interface):
    stats = {"observation.state": {"mean": [1, 2, 3], "std": [2, 2, 2]},
             "action": {"mean": [100.0, -50.0], "std": [1e-3, 1e-3]}}
    policy = RFMPolicy.build("tiny", interface=small_interface, stats=stats)
    images, state, _ = _inputs(small_interface, 2)
    out = policy.predict(images, state, ["x", "y"])
    # with a tiny std, outputs collapse onto the action mean: proof the inverse transform is in the graph
    np.testing.assert_allclose(out[..., 0], 100.0, atol=0.05)
    np.testing.assert_allclose(out[..., 1], -50.0, atol=0.05)


def test_quantile_normalisation_maps_q01_q99_to_unit_range(small_interface):
    stats = {"action": {"q01": [-2.0, 0.0], "q99": [2.0, 10.0], "mean": [0, 0], "std": [1, 1]}}
    policy = RFMPolicy.build("tiny", interface=small_interface, stats=stats, norm_mode="quantile")
    n = policy.net.action_norm
    x = torch.tensor([[-2.0, 0.0], [2.0, 10.0]])
    torch.testing.assert_close(n(x), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(n.inverse(n(x)), x)


def _one_batch(itf, head):
    """A tiny policy and one batch of 8 at 32 px (a quarter of the pixels of `itf`: the learning tests stay quick)."""
    itf = dataclasses.replace(itf, image_size=(32, 32))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b = 8
    images = torch.randint(0, 256, (b, 2, 3, 32, 32), dtype=torch.uint8, generator=g)
    state = torch.randn(b, 3, generator=g)
    actions = torch.randn(b, 8, 2, generator=g) * 3 + 1
    stats = {"action": {"mean": actions.mean((0, 1)).tolist(), "std": actions.std((0, 1)).tolist()}}
    policy = RFMPolicy.build("tiny", interface=itf, head=head, dropout=0.0, stats=stats)
    text, mask = policy.encode_text(["pick"] * 4 + ["place"] * 4)
    return policy, (images, state, text, mask), actions


@pytest.mark.integration
def test_tiny_model_overfits_one_batch(small_interface):
    policy, obs, actions = _one_batch(small_interface, "chunk")
    net = policy.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    first = net.loss(*obs, actions).item()
    for _ in range(300):
        opt.zero_grad()
        net.loss(*obs, actions).backward()
        opt.step()
    assert net.loss(*obs, actions).item() < first / 10


@pytest.mark.integration
def test_flow_head_learns_to_sample_the_demonstrated_chunk(small_interface):
    policy, obs, actions = _one_batch(small_interface, "flow")
    net = policy.net
    noise = torch.randn(actions.shape, generator=torch.Generator().manual_seed(1))
    std = net.action_norm.scale

    def sample_error() -> float:
        net.eval()
        with torch.no_grad():
            err = ((net(*obs, noise) - actions).abs() / std).mean().item()
        net.train()
        return err

    first = sample_error()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for _ in range(400):
        opt.zero_grad()
        net.loss(*obs, actions).backward()
        opt.step()
    assert sample_error() < first / 1.4  # flow matching converges slower than L1 regression


def _loss_batch(interface: RobotInterface):
    """A tiny policy in eval mode (no dropout) and a fixed batch of two: (net, images, state, text, mask, actions)."""
    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=interface, dropout=0.0)
    images = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    text, mask = policy.encode_text(["a", "b"])
    return policy.net.eval(), images, torch.zeros(2, 3), text, mask, torch.randn(2, 8, 2)


def test_padded_actions_do_not_contribute_to_the_loss(small_interface):
    net, images, state, text, mask, actions = _loss_batch(small_interface)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[:, 5:] = True
    garbage = actions.clone()
    garbage[:, 5:] = 1e6
    torch.testing.assert_close(net.loss(images, state, text, mask, actions, pad),
                               net.loss(images, state, text, mask, garbage, pad))


def test_action_weights_scale_each_dimension_of_the_loss(small_interface):
    net, images, state, text, mask, actions = _loss_batch(small_interface)
    with torch.no_grad():
        err = (net(images, state, text, mask) - actions).abs()  # identity stats: robot units are normalised units

        memory, enc_mask = net.encode(images, state, text, mask)

        def loss(w):
            return net.action_loss(memory, enc_mask, actions, action_weights=None if w is None else torch.tensor(w))

        torch.testing.assert_close(loss([3.0, 3.0]), loss(None))  # only relative weights count
        torch.testing.assert_close(loss([0.0, 1.0]), err[..., 1].mean())  # scaled to mean 1: [0, 2]
        torch.testing.assert_close(loss([1.0, 3.0]), ((0.5 * err[..., 0] + 1.5 * err[..., 1]) / 2).mean())


def test_env_state_aid_is_a_masked_training_target_outside_the_policy(small_interface):
    from types import SimpleNamespace

    from rfm.train.aids import TrainBatch, build_aid

    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=small_interface, dropout=0.0)
    before = {k: v.clone() for k, v in policy.net.state_dict().items()}
    aid = build_aid("env_state", {"weight": 1.0})
    stats = {"observation.environment_state": {"mean": [1.0, 2.0, 3.0], "std": [0.5, 0.5, 0.5]}}
    aid.setup(policy, SimpleNamespace(feature_dims={"observation.environment_state": 3}, stats=stats))
    net = policy.net.eval()
    images = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    text, mask = policy.encode_text(["a", "b"])
    env = torch.tensor([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]])
    batch = TrainBatch(images, torch.zeros(2, 3), text, mask, torch.randn(2, 8, 2), torch.zeros(2, 8, dtype=torch.bool))
    feats = net.image_features(images)

    def loss(env_state, valid):
        return aid.losses(net, feats, batch.replace(extras={"env_state": env_state, "env_valid": valid}))["env_state"]

    assert loss(env, torch.tensor([True, True])) > 0
    # a sample without a recorded environment state adds nothing: garbage there changes nothing
    garbage = env.clone()
    garbage[1] = 1e6
    valid = torch.tensor([True, False])
    torch.testing.assert_close(loss(env, valid), loss(garbage, valid))
    torch.testing.assert_close(aid.norm.offset, torch.tensor([1.0, 2.0, 3.0]))
    # the head is the aid's own: the policy's weights (what is saved and served) are untouched
    assert all(torch.equal(v, before[k]) for k, v in policy.net.state_dict().items())



def test_hf_vision_backbone_from_a_local_directory(tmp_path, small_interface):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    policy = RFMPolicy.build("tiny", interface=small_interface, vision_backbone="hf", vision_path=str(tmp_path / "dino"))
    assert policy.net.n_img_tokens == 16  # (32 / 8)^2 patch tokens, CLS dropped
    images, state, _ = _inputs(small_interface, 2)
    out = policy.predict(images, state, ["a", "b"])
    assert out.shape == (2, 8, 2)
    # the checkpoint carries the backbone config and weights: it loads without the original directory
    policy.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "dino" / "config.json").unlink()
    again = RFMPolicy.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_allclose(again.predict(images, state, ["a", "b"]), out, atol=1e-5)


def test_text_encoder_cache_makes_repeats_free(small_interface):
    policy = RFMPolicy.build("tiny", interface=small_interface)
    te = policy.text
    h0, m0 = te.hits, te.misses
    f1, k1 = te.encode(["a never seen instruction 123", "a never seen instruction 123"])
    f2, _k2 = te.encode(["a never seen instruction 123"])
    assert te.misses - m0 == 1 and te.hits - h0 == 1
    np.testing.assert_array_equal(f1[0], f2[0])
    np.testing.assert_array_equal(f1[0], f1[1])
    assert k1.shape == (2, te.max_tokens) and k1[0].sum() > 2 and not k1[0, -1]


def test_predict_says_what_it_expected_and_what_came():
    """An image in (H, W, 3) layout or as 0-1 floats would give wrong actions or a tensor-size error deep inside."""
    policy = RFMPolicy.build("tiny", interface=RobotInterface(cameras=["a", "b"], image_size=(32, 32),
                                                             state_names=["x", "y"], action_names=["u"], chunk_size=4))
    images, state = np.zeros((2, 2, 3, 32, 32), np.uint8), np.zeros((2, 2), np.float32)
    assert policy.predict(images, state, ["p", "q"]).shape == (2, 4, 1)
    for bad, says in (((images.transpose(0, 1, 3, 4, 2), state, ["p", "q"]), r"got \(2, 2, 32, 32, 3\) uint8"),
                      ((images.astype(np.float32) / 255, state, ["p", "q"]), r"0-255\), got \(2, 2, 3, 32, 32\) float32"),
                      ((images, state[:1], ["p", "q"]), r"state: expected \(2, 2\) \(x, y\), got \(1, 2\)"),
                      ((images, state, "p"), "a list of 2 strings")):
        with pytest.raises(ValueError, match=says):
            policy.predict(*bad)

