"""TorchRunner: numpy in, numpy out; one clear error per kind of bad observation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.runtime import ObservationError, TorchRunner, load_runner
from tests.conftest import random_obs

ITF_KW = {"cameras": ["front", "wrist"], "image_size": (64, 64), "state_names": ["x", "y", "z"],
          "action_names": ["vx", "vy"], "chunk_size": 8}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    itf = RobotInterface(**ITF_KW)
    path = tmp_path_factory.mktemp("ck") / "tiny-flow"
    RFMPolicy.build("tiny", interface=itf, head="flow").save_pretrained(path)
    return load_runner(path, backend="torch", device="cpu", seed=0)


def test_single_and_batched_predictions(runner, rng):
    obs = [random_obs(runner.interface, rng, t) for t in ("pick", "place", "pick")]
    noise = rng.standard_normal((3, 8, 2)).astype(np.float32)
    batch = runner.predict(obs, noise=noise)
    assert batch.shape == (3, 8, 2) and batch.dtype == np.float32
    one = runner.predict(obs[2], noise=noise[2])
    assert one.shape == (8, 2)
    np.testing.assert_allclose(one, batch[2], atol=1e-5)


def test_chw_images_are_accepted(runner, rng):
    obs = random_obs(runner.interface, rng)
    chw = {**obs, "images": {k: v.transpose(2, 0, 1) for k, v in obs["images"].items()}}
    noise = rng.standard_normal((8, 2)).astype(np.float32)
    np.testing.assert_array_equal(runner.predict(obs, noise=noise), runner.predict(chw, noise=noise))


def test_describe_has_the_robot_interface(runner):
    d = runner.describe()
    assert d["cameras"] == ["front", "wrist"] and d["image_size"] == [64, 64]
    assert d["state_dim"] == 3 and d["action_dim"] == 2 and d["chunk_size"] == 8
    assert d["model_id"] == "tiny-flow" and len(d["model_version"]) == 12 and d["backend"] == "torch"


@pytest.mark.parametrize("mutate,pattern", [
    (lambda o: o["images"].pop("wrist"), r"missing camera\(s\) \['wrist'\]"),
    (lambda o: o["images"].update(wirst=o["images"].pop("wrist")), r"unknown camera 'wirst'.*Did you mean 'wrist'"),
    (lambda o: o["images"].update(front=np.zeros((32, 64, 3), np.uint8)), r"image 'front' is 32x64 \(H x W\): expected the model's input size 64x64"),
    (lambda o: o["images"].update(front=np.zeros((64, 64, 3), np.float32)), r"image 'front' has dtype float32, expected uint8"),
    (lambda o: o["images"].update(front=np.zeros((64, 64, 2), np.uint8)), r"image 'front' has shape \(64, 64, 2\)"),
    (lambda o: o["images"].update(front=np.zeros((64,), np.uint8)), r"image 'front' has shape \(64,\)"),
    (lambda o: o.update(state=[1.0, 2.0]), r"state has 2 values, the model expects 3 \(x, y, z\)"),
    (lambda o: o.update(state=[1.0, float("nan"), 0.0]), r"non-finite values \(NaN/inf\) or values beyond .* in \['y'\]"),
    (lambda o: o.update(state=[1.0, 0.0, float("inf")]), r"non-finite values \(NaN/inf\) or values beyond .* in \['z'\]"),
    (lambda o: o.update(instruction=5), r"'instruction' must be a string"),
    (lambda o: o.update(images=[1, 2]), r"'images' must be a dict"),
    (lambda o: o.update(states=o.pop("state")), r"'state' is missing .* Did you mean 'states'"),
])
def test_bad_observations_get_clear_errors(runner, rng, mutate, pattern):
    obs = random_obs(runner.interface, rng)
    runner.check_observation(obs)  # a good one passes the check without a frame fitted
    mutate(obs)
    with pytest.raises(ObservationError, match=pattern):
        runner.check_observation(obs)  # (what ChunkExecutor asks on a tick that requests a chunk)
    with pytest.raises(ObservationError, match=pattern):
        runner.predict(obs)


def test_error_in_a_batch_names_the_observation(runner, rng):
    good = random_obs(runner.interface, rng)
    bad = random_obs(runner.interface, rng)
    bad["state"] = [0.0]
    with pytest.raises(ObservationError, match=r"observation\[1\]: state has 1 values"):
        runner.predict([good, bad])


def test_resize_option_accepts_other_image_sizes(tmp_path, rng):
    from rfm.config import RobotInterface

    itf = RobotInterface(cameras=["c"], image_size=(32, 32), state_names=["x"], action_names=["a"], chunk_size=2)
    r = TorchRunner(RFMPolicy.build("tiny", interface=itf), device="cpu", resize_images=True)
    obs = {"images": {"c": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}, "state": [0.0], "instruction": ""}
    assert r.predict(obs).shape == (2, 1)


def test_unknown_backend_suggests(tmp_path):
    with pytest.raises(ValueError, match=r"backend='onxx'.*Did you mean 'onnx'"):
        load_runner(tmp_path, backend="onxx")


@pytest.mark.parametrize(("execution", "pattern"), [
    ({"action_steps": 0}, r"meta.execution.action_steps=0: expected a whole number"),
    ({"action_steps": 4, "by_instruction": {"push": 99}}, r"by_instruction\['push'\]=99: .* at most the chunk size"),
    ([4], "meta.execution must be an object")])
def test_a_malformed_execution_mode_on_the_card_is_refused_at_load(tmp_path, execution, pattern):
    ckpt = RFMPolicy.build("tiny", interface=RobotInterface(**ITF_KW)).save_pretrained(tmp_path / "ckpt")
    raw = json.loads((ckpt / "config.json").read_text())
    raw["meta"]["execution"] = execution
    (ckpt / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=pattern):
        TorchRunner.from_checkpoint(ckpt, device="cpu")
