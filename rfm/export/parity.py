"""Parity of an exported graph against the PyTorch policy on held-out samples, in normalised action units.

Normalised units are (action - offset) / scale with the policy's own action normaliser, so one number means
same thing for every robot. Errors are also given as % of each action dimension's range.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rfm.constants import ACTION

# Goals per precision (measured and reported; the export does not fail on them).
GOALS = {  # fp32: a graph that computes what PyTorch does, to the order of its sums (2e-4 seen on real frames)
    "fp32": ("max_abs_error", 1e-3),
    "fp16": ("max_abs_error", 1e-2),
    "int8": ("mean_abs_error_pct_of_range_max", 2.0),
}


@torch.no_grad()
def torch_reference(policy, feed: dict[str, np.ndarray], batch_size: int = 16) -> np.ndarray:
    """PyTorch fp32 eager actions (N, H, D_a) in robot units for a feed (with its committed actions, prefix /
    prefix_len, when it has them)."""
    net = policy.net.eval()
    dev = policy.device
    outs = []
    n = len(feed["images"])
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        opt = {k: torch.from_numpy(feed[k][sl]).to(dev) if k in feed else None
               for k in ("noise", "prefix", "prefix_len")}
        outs.append(
            net(
                torch.from_numpy(feed["images"][sl]).to(dev),
                torch.from_numpy(feed["state"][sl]).to(dev),
                torch.from_numpy(feed["text"][sl]).to(dev),
                torch.from_numpy(feed["text_mask"][sl] > 0.5).to(dev),
                opt["noise"],
                opt["prefix"],
                opt["prefix_len"],
            )
            .float()
            .cpu()
            .numpy()
        )
    return np.concatenate(outs)


def _action_range(policy, known: np.ndarray | None, scale: np.ndarray) -> tuple[np.ndarray, str]:
    """Per-dimension range of actions in normalised units, and where it came from."""
    stats = (policy.stats or {}).get(ACTION) or {}
    if "min" in stats and "max" in stats:
        rng = np.asarray(stats["max"], np.float32).reshape(-1) - np.asarray(stats["min"], np.float32).reshape(
            -1
        )
        source = "checkpoint stats (max - min)"
    elif known is not None:
        rng, source = np.asarray(known, np.float32).reshape(-1), "dataset actions (max - min)"
    else:
        return np.full(scale.shape, 2.0, np.float32), "assumed 2 normalised units (no action stats)"
    return np.maximum(rng / scale, 1e-6), source


def mean_error_pct_of_range(
    policy, out: np.ndarray, ref: np.ndarray, action_range: np.ndarray | None = None
) -> np.ndarray:
    """Mean |out - ref| per action dimension over samples and steps, as % of that dimension's range: (D_a,).
    out, ref: actions (N, H, D_a) in robot units; action_range as parity_report takes it."""
    scale = policy.net.action_norm.scale.cpu().numpy()
    rng, _ = _action_range(policy, action_range, scale)
    return np.abs(out - ref).mean(axis=(0, 1)) / scale / rng * 100


def parity_report(
    policy,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    feed: dict[str, np.ndarray],
    precision: str,
    source: str,
    batch_sizes: tuple[int, ...] = (1, 3),
    action_range: np.ndarray | None = None,
    runtime: str = "onnxruntime",
) -> dict:
    """Compare `run` (a feed -> actions (B, H, D_a), e.g. an onnxruntime or OpenVINO graph) with PyTorch on
    `feed`, run at each batch size (dynamic batch axis); `runtime` names what ran it ("openvino 2026.4.1")."""
    n = len(feed["images"])
    ref = torch_reference(policy, feed)
    offset = policy.net.action_norm.offset.cpu().numpy()
    scale = policy.net.action_norm.scale.cpu().numpy()
    nref = (ref - offset) / scale
    sizes = sorted({min(b, n) for b in (*batch_sizes, n)})
    per_batch, worst = {}, None
    for b in sizes:
        out = np.concatenate([run({k: v[i : i + b] for k, v in feed.items()}) for i in range(0, n, b)])
        err = np.abs((out - offset) / scale - nref)  # (N, H, D_a) normalised units
        per_batch[str(b)] = {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean())}
        if worst is None or err.max() > worst[0].max():
            worst = (err, out)
    err, out = worst
    nout = (out - offset) / scale
    a, r = nout.reshape(n, -1), nref.reshape(n, -1)
    cos = (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    rng, rng_source = _action_range(policy, action_range, scale)
    mean_pct = err.mean(axis=(0, 1)) / rng * 100
    max_pct = err.max(axis=(0, 1)) / rng * 100
    report = {
        "reference": "PyTorch fp32 eager (same inputs, same noise, same committed actions)",
        "runtime": runtime,
        "precision": precision,
        "source": source,
        "samples": n,
        "batch_sizes": sizes,
        "units": "normalised action units ((action - offset) / scale of the policy's action normaliser)",
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "max_abs_error_robot_units": float(np.abs(out - ref).max()),
        "cosine_similarity_mean": float(cos.mean()),
        "cosine_similarity_min": float(cos.min()),
        "range_source": rng_source,
        "mean_abs_error_pct_of_range": [float(v) for v in mean_pct],
        "max_abs_error_pct_of_range": [float(v) for v in max_pct],
        "mean_abs_error_pct_of_range_max": float(mean_pct.max()),
        "per_batch_size": per_batch,
    }
    if "prefix_len" in feed:  # a model taking committed actions: how many samples carried some
        report["samples_with_committed_actions"] = int((feed["prefix_len"] > 0).sum())
    key, limit = GOALS[precision]
    report["goal"] = {"metric": key, "limit": limit, "met": bool(report[key] <= limit)}
    return report


def format_report(report: dict, action_names: list[str] | None = None) -> str:
    """The parity report as a few human-readable lines."""
    g = report["goal"]
    names = action_names or [f"a{i}" for i in range(len(report["mean_abs_error_pct_of_range"]))]
    pct = ", ".join(
        f"{nm} {m:.3f}%/{x:.3f}%"
        for nm, m, x in zip(
            names, report["mean_abs_error_pct_of_range"], report["max_abs_error_pct_of_range"]
        )
    )
    lines = [
        (
            f"parity vs PyTorch ({report['precision']} on {report.get('runtime', 'onnxruntime')}, "
            f"{report['samples']} held-out "
            f"{report['source']} samples, "
            f"batch sizes {report['batch_sizes']}):"
        ),
        (
            f"  max |err| {report['max_abs_error']:.3g}   mean |err| {report['mean_abs_error']:.3g}"
            "   (normalised units)"
        ),
        (
            f"  cosine similarity mean {report['cosine_similarity_mean']:.6f}"
            f"   min {report['cosine_similarity_min']:.6f}"
        ),
        f"  error % of range (mean/max) per dim: {pct}   [{report['range_source']}]",
    ]
    if "text_encoder_max_abs_error" in report:
        lines.append(f"  text encoder max |err| {report['text_encoder_max_abs_error']:.3g}")
    lines.append(f"  goal {g['metric']} <= {g['limit']:g}: {'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)
