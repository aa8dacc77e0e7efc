"""Every supported robot's interface builds a policy that accepts its example observation."""

from __future__ import annotations

import pytest

from rfm import RFMPolicy
from rfm.robots import ROBOTS
from rfm.runtime.torch_runner import TorchRunner


@pytest.mark.parametrize("name", sorted(ROBOTS))
def test_robot_example_runs_through_a_policy(name):
    itf, obs = ROBOTS[name]()
    runner = TorchRunner(RFMPolicy.build("tiny", interface=itf), device="cpu")
    chunk = runner.predict(obs)
    assert chunk.shape == (itf.chunk_size, itf.action_dim)
