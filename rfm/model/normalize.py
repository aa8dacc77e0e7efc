"""Affine normalisation of state and actions, stored as buffers so stats travel with the weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EPS = 1e-6


def affine_from_stats(stats: dict | None, dim: int, mode: str, feature: str = "stats") -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) with normalised = (x - offset) / scale, for one feature's stats dict.

    mean_std: (x - mean) / std;  quantile: q01..q99 -> [-1, 1];  min_max: min..max -> [-1, 1].
    Missing stats give the identity. Errors name `feature` (e.g. "stats['action']").
    """
    if not stats:
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)
    need = ("mean", "std") if mode == "mean_std" else ("min", "max")
    has_quantiles = mode == "quantile" and "q01" in stats and "q99" in stats
    missing = [] if has_quantiles else [k for k in need if k not in stats]
    if missing:
        raise ValueError(f"{feature} has no {missing[0]!r} (model.norm_mode={mode} needs {' and '.join(need)}); it has "
                         f"{sorted(stats)}")
    if mode == "mean_std":
        lo, hi = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
        offset, scale = lo, hi
    else:
        a, b = ("q01", "q99") if mode == "quantile" else ("min", "max")
        if a not in stats:  # fall back to min/max when quantiles were not computed
            a, b = "min", "max"
        lo, hi = np.asarray(stats[a], np.float64), np.asarray(stats[b], np.float64)
        offset, scale = (lo + hi) / 2, (hi - lo) / 2
    offset, scale = offset.reshape(-1), scale.reshape(-1)
    if offset.shape != (dim,) or scale.shape != (dim,):
        raise ValueError(f"{feature} has {offset.shape[0]} values, the model expects {dim}")
    scale = np.where(np.abs(scale) < EPS, 1.0, scale)  # constant dims pass through unscaled
    return offset.astype(np.float32), scale.astype(np.float32)


class Normalizer(nn.Module):
    """x -> (x - offset) / scale and back; both directions export to ONNX as two elementwise ops."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def set_stats(self, stats: dict | None, mode: str, feature: str = "stats") -> None:
        offset, scale = affine_from_stats(stats, self.offset.numel(), mode, feature)
        self.offset.copy_(torch.from_numpy(offset))
        self.scale.copy_(torch.from_numpy(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset
