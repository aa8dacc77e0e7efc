"""Normalisation statistics in LeRobot's layout: min, max, mean, std, count and quantiles q01..q99.

Vectors get one value per dimension; images get per-channel values in [0, 1] shaped (3, 1, 1), as lerobot
writes them. Dataset stats are exact over all frames for vectors, and count-weighted over episodes for
images (lerobot aggregates the same way).
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
IMAGE_SAMPLES = 100  # frames per episode used for image stats (lerobot samples about as many)


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of (N,) or (N, D) values over the frame axis; every stat has shape (D,) ((1,) for scalars)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
        raise ValueError("cannot compute stats of zero frames")
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([x.shape[0]])}
    qs = np.quantile(x, list(QUANTILES.values()), axis=0)
    out.update({k: qs[i] for i, k in enumerate(QUANTILES)})
    return out


def image_stats(frames: np.ndarray, max_samples: int = IMAGE_SAMPLES) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, 3) uint8 frames in [0, 1], each shaped (3, 1, 1); count = T."""
    frames = np.asarray(frames)
    t = frames.shape[0]
    idx = np.unique(np.round(np.linspace(0, t - 1, min(t, max_samples))).astype(int))
    sample = frames[idx]
    step = max(1, max(sample.shape[1:3]) // 150)  # downsample large images like lerobot does
    sample = sample[:, ::step, ::step].reshape(-1, sample.shape[-1])
    if sample.dtype == np.uint8:
        s = _uint8_stats(sample)
    else:
        s = vector_stats(sample.astype(np.float64) / 255.0)
    s = {k: v.reshape(-1, 1, 1) for k, v in s.items() if k != "count"}
    s["count"] = np.array([t])
    return s


def _uint8_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """vector_stats(pixels / 255) of (N, C) uint8 values, from one 256-bin histogram per channel: the same numbers
    (quantiles interpolated linearly, as np.quantile does) without sorting millions of floats. A recording server
    writes an episode per robot every few seconds; sorting was 80 % of its recorder's time."""
    n, values = pixels.shape[0], np.arange(256, dtype=np.float64)
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for c in range(pixels.shape[1]):
        hist = np.bincount(pixels[:, c], minlength=256).astype(np.float64)
        present = np.flatnonzero(hist)
        mean = (hist * values).sum() / n
        out["min"].append(values[present[0]])
        out["max"].append(values[present[-1]])
        out["mean"].append(mean)
        out["std"].append(np.sqrt((hist * (values - mean) ** 2).sum() / n))
        ends = np.cumsum(hist)  # sorted position i holds the value v with ends[v - 1] <= i < ends[v]
        for k, q in QUANTILES.items():
            pos = q * (n - 1)
            lo, hi = int(np.floor(pos)), int(np.ceil(pos))
            v_lo, v_hi = np.searchsorted(ends, lo, "right"), np.searchsorted(ends, hi, "right")
            out[k].append(v_lo + (v_hi - v_lo) * (pos - lo))
    return {k: np.asarray(v, np.float64) / 255.0 for k, v in out.items()}


def aggregate(stats_list: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats of one feature: exact min/max/mean/std, count-weighted quantiles."""
    stats_list = [{k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for s in stats_list]
    counts = np.stack([s["count"] for s in stats_list]).astype(np.float64)  # (E, 1)
    means = np.stack([s["mean"] for s in stats_list])
    w = counts.reshape(counts.shape[0], *([1] * (means.ndim - 1)))
    total = counts.sum()
    mean = (means * w).sum(0) / total
    var = ((np.stack([s["std"] for s in stats_list]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
    out = {"min": np.min(np.stack([s["min"] for s in stats_list]), 0),
           "max": np.max(np.stack([s["max"] for s in stats_list]), 0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for q in QUANTILES:
        if all(q in s for s in stats_list):
            out[q] = (np.stack([s[q] for s in stats_list]) * w).sum(0) / total
    return out


def widened_range(stats: dict, margin: float) -> tuple[np.ndarray, np.ndarray] | None:
    """A feature's (min, max) widened by `margin` x (max - min) on each side, float32; None without min and max.
    The served action limits (rfm.runtime.limits) and training's validation score clip to it."""
    if "min" not in stats or "max" not in stats:
        return None
    lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Nested lists for stats.json (ints stay ints for count)."""
    return {feat: {k: np.asarray(v).tolist() for k, v in s.items()} for feat, s in stats.items()}


def from_json(stats: dict) -> dict[str, dict[str, np.ndarray]]:
    return {feat: {k: np.asarray(v) for k, v in s.items()} for feat, s in stats.items() if isinstance(s, dict)}
