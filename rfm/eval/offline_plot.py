"""The offline evaluation's picture: predicted vs recorded actions of the worst and a typical episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfm.eval.offline import EpisodePrediction

CHUNKS_SHOWN = 8  # faint full chunks drawn per episode


def pick_episodes(preds: list[EpisodePrediction], results: dict) -> list[tuple[str, EpisodePrediction]]:
    """[("worst", ep), ("typical", ep)]: the worst episode and the one of median error (just the worst if alone)."""
    by_index = {p.index: p for p in preds}
    ranked = [w["episode"] for w in results["worst_episodes"]]
    if len(preds) == 1:
        return [("worst", preds[0])]
    worst = by_index[ranked[0]]
    errors = {p.index: _episode_error(p) for p in preds if p.index != worst.index}
    typical = sorted(errors, key=errors.get)[(len(errors) - 1) // 2]
    return [("worst", worst), ("typical", by_index[typical])]


def _episode_error(p: EpisodePrediction) -> float:
    keep = ~p.pad
    return float((np.abs(p.pred - p.target) * keep[..., None]).sum() / max(int(keep.sum()) * p.pred.shape[2], 1))


def plot_offline(preds: list[EpisodePrediction], results: dict, out: str | Path) -> Path:
    """One subplot per action dimension (rows) and chosen episode (columns): the recorded actions, each evaluated
    frame's first predicted action, and every few frames the whole predicted chunk, faint. matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["mae"])
    shown = pick_episodes(preds, results)
    fig, axes = plt.subplots(len(names), len(shown), figsize=(5.5 * len(shown), 1.6 * len(names) + 0.8),
                             dpi=110, sharex="col", squeeze=False, layout="constrained")
    for col, (label, ep) in enumerate(shown):
        every = max(1, len(ep.frames) // CHUNKS_SHOWN)
        stop = len(ep.recorded)
        for d, name in enumerate(names):
            ax = axes[d, col]
            ax.plot(np.arange(stop), ep.recorded[:, d], color="black", lw=1.2, label="recorded")
            ax.plot(ep.frames, ep.pred[:, 0, d], color="tab:red", lw=1.0, label="predicted (first action)")
            for k in range(0, len(ep.frames), every):
                t = ep.frames[k] + np.arange(ep.pred.shape[1])
                ok = t < stop
                ax.plot(t[ok], ep.pred[k, ok, d], color="tab:red", lw=0.8, alpha=0.35)
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0, col].set_title(f"{label}: episode {ep.index} (MAE {_episode_error(ep):.3g})", fontsize=9)
        axes[-1, col].set_xlabel("frame")
    axes[0, 0].legend(fontsize=7, loc="best")
    ckpt = "/".join(Path(results["checkpoint"]).parts[-2:])
    fig.suptitle(f"{ckpt} on {Path(results['dataset']).name}: predicted vs recorded "
                 f"actions (faint: full chunks)", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
