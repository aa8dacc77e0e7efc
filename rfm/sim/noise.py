"""Noise injected into the actions a demonstrator executes (DART, Laskey et al. 2017), the labels kept clean.

A policy trained on clean demos only ever sees states on the expert's path; a small slip at run time leads to
states it has no label for. Executing a perturbed action while recording the expert's own action for the state
reached shows the expert correcting those slips: the same number of demos, with recovery in them.
"""

from __future__ import annotations

import numpy as np


class CorrelatedNoise:
    """Gaussian noise on the first `dims` action dimensions, AR(1)-correlated over steps: n_t = rho n_{t-1} +
    sqrt(1 - rho^2) std e_t. Its stationary std is `std` for any rho; a high rho drifts the hand off the path
    for several steps (a slip), where white noise (rho 0) averages out within a few."""

    def __init__(self, std: float, correlation: float, dims: int, seed: int | list[int]) -> None:
        if std < 0 or not 0.0 <= correlation < 1.0:
            raise ValueError(f"action noise std {std} must be >= 0 and its correlation {correlation} in [0, 1)")
        self.std, self.rho, self.dims = float(std), float(correlation), int(dims)
        self.rng = np.random.default_rng(seed)
        self.state: np.ndarray | None = None  # None until the first sample

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """The action to execute: `action` with the next noise sample added to its first `dims` entries."""
        e = self.rng.standard_normal(self.dims) * self.std
        # the first sample is drawn at the stationary std, not grown into it
        self.state = e if self.state is None else self.rho * self.state + np.sqrt(1.0 - self.rho ** 2) * e
        out = np.array(action, dtype=np.float32, copy=True)
        out[:self.dims] += self.state.astype(np.float32)
        return out
