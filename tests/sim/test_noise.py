"""Noise on the executed demonstrator actions (DART): its statistics, and that only what is executed changes."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.sim.noise import CorrelatedNoise


def _samples(noise: CorrelatedNoise, n: int) -> np.ndarray:
    return np.stack([noise(np.zeros(4, np.float32)) for _ in range(n)])


def test_noise_has_the_asked_std_and_correlation_on_the_hand_dims_only():
    for rho in (0.0, 0.9):
        x = _samples(CorrelatedNoise(0.2, rho, dims=3, seed=0), 20_000)
        assert np.all(x[:, 3] == 0.0)  # the gripper command is never perturbed
        assert np.allclose(x[:, :3].std(axis=0), 0.2, rtol=0.1)
        lag1 = np.mean([np.corrcoef(x[:-1, d], x[1:, d])[0, 1] for d in range(3)])
        assert abs(lag1 - rho) < 0.05


def test_noise_is_reproducible_per_seed_and_leaves_the_input_alone():
    action = np.array([0.5, -0.5, 0.0, 1.0], np.float32)
    a = [CorrelatedNoise(0.1, 0.9, 3, [7, 11, 0])(action) for _ in range(2)]
    b = CorrelatedNoise(0.1, 0.9, 3, [7, 11, 1])(action)
    np.testing.assert_array_equal(a[0], a[1])
    assert np.abs(a[0] - b).max() > 0
    np.testing.assert_array_equal(action, [0.5, -0.5, 0.0, 1.0])


@pytest.mark.parametrize("std, rho", [(-0.1, 0.5), (0.1, 1.0), (0.1, -0.2)])
def test_bad_noise_settings_are_refused(std, rho):
    with pytest.raises(ValueError, match="action noise"):
        CorrelatedNoise(std, rho, 3, 0)
