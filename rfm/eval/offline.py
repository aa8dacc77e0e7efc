"""Open-loop evaluation on recorded episodes: each frame's predicted chunk against the actions the robot recorded.

No simulator: at frame t of an episode the policy sees the recorded observation (frames fitted to the model's size by
WindowDataset, the path training and serving take) and its chunk (H, D_a) is compared with the recorded actions
t..t+H-1; steps past the episode end are left out. Errors are in robot units per action dimension, by chunk step,
and normalised by the dataset's action std (nMAE) so dimensions of different units compare.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfm.constants import ACTION, CONFIG_FILE
from rfm.data.reader import LeRobotDataset
from rfm.eval.card import weights_digest
from rfm.runtime.base import Runner
from rfm.runtime.dataset_match import check_same_robot
from rfm.runtime.limits import ActionLimits

WORST = 5  # episodes listed in worst_episodes
MIN_STD = 1e-8  # an action dimension with a smaller std (constant in the data) has no normalised error


@dataclass
class EpisodePrediction:
    """The chunks predicted at the evaluated frames of one episode, beside what was recorded."""

    index: int  # episode_index
    frames: np.ndarray  # (n,) frame numbers within the episode
    pred: np.ndarray  # (n, H, D_a) predicted chunks, robot units
    target: np.ndarray  # (n, H, D_a) recorded actions t..t+H-1 (the last one repeated past the end)
    pad: np.ndarray  # (n, H) True where t+h is past the episode end
    recorded: np.ndarray  # (T, D_a) the episode's recorded actions


def training_meta(checkpoint: str | Path) -> dict:
    """The checkpoint's config.json meta; for an ONNX export, the training data it records in export.json (older
    exports: its source checkpoint's meta, where that still exists)."""
    from rfm.model.serialization import read_json
    from rfm.runtime.manifest import EXPORT_FILE

    path = Path(checkpoint)
    if not (path / CONFIG_FILE).is_file() and (path / EXPORT_FILE).is_file():
        manifest = read_json(path / EXPORT_FILE)
        if manifest.get("data") is not None:
            return {"data": manifest["data"]}
        path = Path(manifest["checkpoint"]) if manifest.get("checkpoint") else path
    return read_json(path / CONFIG_FILE).get("meta", {}) if (path / CONFIG_FILE).is_file() else {}


def _trained_on(ds: LeRobotDataset, meta: dict) -> bool:
    """Whether `ds` is the first dataset the checkpoint trained on (the one its validation episodes came from)."""
    paths = [p for p in str(meta.get("data", {}).get("dataset") or "").split(",") if p]
    if not paths:
        return False
    first = Path(paths[0])
    return first.resolve() == ds.root.resolve() or first.name == ds.root.resolve().name


def choose_episodes(ds: LeRobotDataset, episodes: list[int] | None = None, last: int | None = None,
                    meta: dict | None = None) -> tuple[list[int], str]:
    """(episode indices, which ones and why) for explicit `episodes`, the `last` N, or by default the episodes the
    checkpoint's training held out of this dataset (meta.data.val_episodes: the last N), else all of them."""
    have = [e.index for e in ds.episodes]
    if episodes is not None and last is not None:
        raise ValueError("give episodes or last, not both")
    if episodes is not None:
        bad = [e for e in episodes if e not in set(have)]
        if bad or not episodes:
            raise ValueError(f"dataset {ds.root}: no episode {bad or episodes} (it has {len(have)}: "
                             f"{have[0]}..{have[-1]})")
        return list(dict.fromkeys(episodes)), "chosen"
    if last is not None:
        if not 1 <= last <= len(have):
            raise ValueError(f"last={last}: dataset {ds.root} has {len(have)} episodes")
        return have[-last:], f"the last {last}"
    meta = meta or {}
    if _trained_on(ds, meta):
        n = int(meta.get("data", {}).get("val_episodes") or 0)
        if 0 < n < len(have):
            return have[-n:], f"held out in training (the last {n}, checkpoint meta.data.val_episodes)"
        return have, "all; the checkpoint trained on every one of them (no val_episodes): these are training data"
    return have, "all (nothing records which episodes of this dataset its training held out)"


def predict_episodes(runner: Runner, ds: LeRobotDataset, episodes: list[int], stride: int = 1,
                     batch_size: int = 32, progress: bool = False) -> list[EpisodePrediction]:
    """The runner's chunk at every `stride`-th frame of each episode (frames 0, K, 2K, ...)."""
    import torch

    from rfm.data.windows import WindowDataset, collate_windows
    from rfm.progress import progress_bar
    from rfm.runtime.observation import Batch

    tqdm = progress_bar()

    itf = runner.interface
    if stride < 1:
        raise ValueError(f"stride={stride}: expected >= 1")
    with warnings.catch_warnings():  # episodes are read in order: the cache need hold only the one being read
        warnings.filterwarnings("ignore", message="decoded frames of the chosen episodes")
        windows = WindowDataset(ds, itf, episodes=episodes, cache_bytes=1 << 30)
    starts = np.array([windows.episodes[int(k)].start for k in windows.frame_ep])
    chosen = np.flatnonzero((windows.frames - starts) % stride == 0)
    preds: list[np.ndarray] = []
    with torch.inference_mode():
        for lo in tqdm(range(0, len(chosen), batch_size), desc="offline eval", disable=not progress,
                       dynamic_ncols=True):
            b = collate_windows([windows[int(i)] for i in chosen[lo:lo + batch_size]])
            batch = Batch(b["images"].numpy(), b["state"].numpy().astype(np.float32), b["instruction"])
            preds.append(runner.predict_batch(batch))  # (B, H, D_a)
    pred = np.concatenate(preds) if preds else np.zeros((0, itf.chunk_size, itf.action_dim), np.float32)
    out = []
    for k, e in enumerate(windows.episodes):
        rows = np.flatnonzero(windows.frame_ep[chosen] == k)
        t = windows.frames[chosen[rows]] - e.start  # (n,)
        idx = e.start + t[:, None] + np.arange(itf.chunk_size)  # (n, H)
        out.append(EpisodePrediction(e.index, t, pred[rows], ds.actions[np.minimum(idx, e.stop - 1)], idx >= e.stop,
                                     ds.actions[e.start:e.stop]))
    return out


def offline_metrics(episodes: list[EpisodePrediction], action_names: list[str], action_std: np.ndarray) -> dict:
    """MAE per action dim (robot units), by chunk step, normalised by the action std, and the worst episodes."""
    d = len(action_names)
    h = episodes[0].pred.shape[1]
    std = np.asarray(action_std, np.float64).reshape(d)
    dim_sum, n_steps = np.zeros(d), 0
    step_sum, step_n = np.zeros(h), np.zeros(h)
    per_episode = []
    for ep in episodes:
        keep = ~ep.pad  # (n, H)
        err = np.abs(ep.pred.astype(np.float64) - ep.target) * keep[..., None]  # (n, H, D_a)
        dim_sum += err.sum((0, 1))
        n_steps += int(keep.sum())
        step_sum += err.sum((0, 2))
        step_n += keep.sum(0) * d
        ep_mae = err.sum((0, 1)) / max(int(keep.sum()), 1)  # (D_a,)
        per_episode.append({"episode": ep.index, "frames": len(ep.frames), "mae": float(ep_mae.mean()),
                            "nmae": _mean_nmae(ep_mae, std)})
    mae = dim_sum / max(n_steps, 1)
    nmae = [float(m / s) if s > MIN_STD else None for m, s in zip(mae, std)]
    per_episode.sort(key=lambda r: -(r["nmae"] if r["nmae"] is not None else r["mae"]))
    return {"frames": sum(len(ep.frames) for ep in episodes),
            "mae": dict(zip(action_names, mae.tolist())), "mean_mae": float(mae.mean()),
            "mae_by_step": [float(s / n) if n else None for s, n in zip(step_sum, step_n)],
            "nmae": dict(zip(action_names, nmae)), "mean_nmae": _mean_nmae(mae, std),
            "action_std": dict(zip(action_names, std.tolist())), "worst_episodes": per_episode[:WORST]}


def _mean_nmae(mae: np.ndarray, std: np.ndarray) -> float | None:
    ok = std > MIN_STD
    return float((mae[ok] / std[ok]).mean()) if ok.any() else None


def offline_eval(checkpoint: str | Path | None, dataset: str | Path | LeRobotDataset, episodes: list[int] | None = None,
                 last: int | None = None, stride: int = 1, backend: str = "torch", runner: Runner | None = None,
                 batch_size: int = 32, progress: bool = False) -> tuple[dict, list[EpisodePrediction]]:
    """(results, per-episode predictions) of `checkpoint` (or `runner`) on episodes of a LeRobot dataset (a
    directory or an opened LeRobotDataset). With a runner and no checkpoint (a model in a notebook), the episodes
    training held out are unknown: pass `episodes` or `last`, else every episode is scored.

    results = {"kind": "offline", "checkpoint", "backend", "weights_sha256", "dataset", "episodes",
    "episodes_source", "stride", "frames", "chunk_size", "mae": {action: v}, "mean_mae", "mae_by_step": [H],
    "nmae": {action: v}, "mean_nmae", "action_std", "worst_episodes": [{episode, frames, mae, nmae}], "wall_time_s"}
    """
    t0 = time.time()
    if checkpoint is None and runner is None:
        raise ValueError("offline_eval: give a checkpoint directory or a runner")
    ds = dataset if isinstance(dataset, LeRobotDataset) else LeRobotDataset(dataset)
    digest = weights_digest(checkpoint) if backend == "torch" and checkpoint is not None else None  # as rfm eval
    if runner is None:
        from rfm.runtime import load_runner

        runner = load_runner(checkpoint, backend=backend, seed=0)  # seeded: the flow head's noise repeats
    check_same_robot(ds, runner.interface, "--dataset")
    chosen, source = choose_episodes(ds, episodes, last, training_meta(checkpoint) if checkpoint is not None else {})
    preds = predict_episodes(runner, ds, chosen, stride, batch_size, progress)
    # the limits rfm serve clips this checkpoint's chunks to (None without action stats, or with only a runner)
    limits = ActionLimits.from_stats(checkpoint, runner.interface.action_names) if checkpoint is not None else None
    for ep in preds:  # scored as a robot gets them: rfm serve clips every chunk to these limits
        ep.pred = np.clip(ep.pred, limits.low, limits.high) if limits is not None else ep.pred
    std = np.asarray(ds.stats[ACTION]["std"], np.float64)
    results = {"kind": "offline", "checkpoint": None if checkpoint is None else str(checkpoint),
               "backend": runner.backend, "weights_sha256": digest, "dataset": str(ds.root), "episodes": chosen, "episodes_source": source,
               "stride": stride, "chunk_size": runner.interface.chunk_size,
               "action_limits": limits.source if limits is not None else None,
               **offline_metrics(preds, runner.interface.action_names, std)}
    results["wall_time_s"] = round(time.time() - t0, 1)
    return results, preds


def format_offline(results: dict) -> str:
    """The results as a table: per action dimension, by chunk step, and the worst episodes."""
    eps = results["episodes"]
    shown = ",".join(map(str, eps)) if len(eps) <= 12 else f"{','.join(map(str, eps[:12]))},... ({len(eps)})"
    rows = [f"{results['checkpoint']} on {results['dataset']}",
            (f"episodes {shown}: {results['episodes_source']}; {results['frames']} frames, stride "
             f"{results['stride']}, chunk {results['chunk_size']}"
             + ("; chunks clipped to the action limits rfm serve applies" if results.get("action_limits") else "")),
            f"{'action':<20}{'MAE':>12}{'std':>12}{'nMAE':>9}"]
    for name, mae in results["mae"].items():
        nmae = results["nmae"][name]
        rows.append(f"{name:<20}{mae:>12.4g}{results['action_std'][name]:>12.4g}"
                    f"{'-' if nmae is None else f'{nmae:.3f}':>9}")
    mean_nmae = results["mean_nmae"]
    rows.append(f"{'mean':<20}{results['mean_mae']:>12.4g}{'':>12}{'-' if mean_nmae is None else f'{mean_nmae:.3f}':>9}")
    rows.append("MAE by chunk step: " + "  ".join(f"{i + 1}:{'-' if v is None else f'{v:.3g}'}"
                                                  for i, v in enumerate(results["mae_by_step"])))
    rows.append("worst episodes: " + ", ".join(
        f"{w['episode']} (MAE {w['mae']:.4g}" + ("" if w["nmae"] is None else f", nMAE {w['nmae']:.3f}") + ")"
        for w in results["worst_episodes"]))
    return "\n".join(rows)
