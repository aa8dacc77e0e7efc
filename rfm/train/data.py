"""Training data: one or more LeRobot datasets -> one window set, merged normalisation stats, and a sampler.

Several datasets let the flywheel aggregate (DAgger): the original demonstrations plus what the fleet recorded,
trained together so fine-tuning on field data does not forget the rest. Task balancing gives every task the same
share of each batch, so short tasks (few frames per episode) are not drowned out by long ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Sampler

from rfm.config import RobotInterface
from rfm.constants import ACTION, FUTURE_FRAMES, OBS_ENV_STATE, OBS_STATE
from rfm.data.reader import LeRobotDataset
from rfm.data.recording import frame_mask, tick_timing
from rfm.data.recording import summary as recording_summary
from rfm.data.stats import aggregate
from rfm.data.view import blank_cameras, listed_episodes
from rfm.data.windows import WindowDataset, interface_from_dataset
from rfm.train.config import BALANCE_MODES


@dataclass
class TrainingData:
    """Everything the training loop needs from its datasets."""

    interface: RobotInterface
    train_set: ConcatDataset
    val_set: ConcatDataset | None
    stats: dict  # merged {feature: {stat: array}} for observation.state, action (and environment_state)
    info: dict  # recorded in the checkpoint's meta
    feature_dims: dict[str, int] = field(default_factory=dict)  # extra features the batches carry, and their sizes
    notes: list[str] = field(default_factory=list)  # what the run should say about its data before training


def open_datasets(paths: list[str]) -> list[LeRobotDataset]:
    """Open each dataset; the first one defines the robot, the others must match it (names the mismatch)."""
    datasets = [LeRobotDataset(p) for p in paths]
    first = datasets[0]
    for ds in datasets[1:]:
        for what in ("state_names", "action_names"):
            if list(getattr(ds, what)) != list(getattr(first, what)):
                raise ValueError(f"dataset {ds.root}: {what} {list(getattr(ds, what))} differ from {first.root}'s "
                                 f"{list(getattr(first, what))}; datasets trained together must share the robot")
        if float(ds.fps) != float(first.fps):
            raise ValueError(f"dataset {ds.root}: fps {ds.fps} differs from {first.root}'s {first.fps}")
    return datasets


def merged_stats(datasets: list[LeRobotDataset]) -> dict:
    """Count-weighted merge of the datasets' state/action stats (exact mean, std, min, max).

    The environment state (a training target some datasets lack) is merged over the datasets that have it.
    """
    if len(datasets) == 1:
        return datasets[0].stats
    out = {}
    for key in (OBS_STATE, ACTION, OBS_ENV_STATE):
        parts = [{**ds.stats[key], "count": np.array([len(ds.actions)])} for ds in datasets if key in ds.stats]
        if len(parts) == len(datasets) or (key == OBS_ENV_STATE and parts):
            out[key] = aggregate(parts)
    return out


def feature_dim(datasets: list[LeRobotDataset], key: str) -> int:
    """Size of feature `key` in the first dataset that records it (0 when none does)."""
    for ds in datasets:
        ft = ds.features.get(key)
        if ft is not None:
            return int(np.prod(ft["shape"]))
    return 0


def split_cache(total: int, needs: list[int]) -> list[int]:
    """Share `total` cache bytes among datasets in proportion to what each needs decoded (a small recording beside
    large demo sets should not leave the large ones re-decoding while its share sits empty)."""
    if sum(needs) <= total:
        return [n + (total - sum(needs)) // len(needs) for n in needs]
    return [total * n // max(sum(needs), 1) for n in needs]


def build_training_data(paths: list[str], chunk_size: int, image_size: tuple[int, int] | None,
                        cameras: list[str] | None, val_episodes: int, frame_cache_gb: float = 4.0,
                        features: tuple[str, ...] = (), cache_copies: int = 1,
                        prepare: Callable[[list[LeRobotDataset]], dict] | None = None,
                        interface: dict | None = None, future_steps: int | None = None,
                        recorded: tuple[str, ...] | None = None,
                        exclude: list[list[int]] | None = None) -> TrainingData:
    """Window sets over all datasets; validation holds out the last `val_episodes` of the first dataset.

    frame_cache_gb is the memory all copies of the window sets may hold decoded (each DataLoader worker process
    has its own copy, `cache_copies` of them; 1 when the main process loads). A budget per worker multiplied unseen with the workers: 2 x 8 GiB
    beside another job left 4 GiB of a 24 GiB machine.

    features: extra features the batches carry for training aids: observation.environment_state ("env_state" and
    "env_valid"), future_frames ("future_images": each window's frames future_steps ahead, default chunk_size).
    prepare: called on the opened datasets before windows are cut (training aids that change data in memory); what
    it returns goes into info. interface: robot interface fields over the
    dataset's (the robot's geometry, when the dataset does not record it). recorded: what to learn from in datasets
    that are fleet recordings (rfm.data.recording.parse_kinds; None: everything), e.g. ("success", "corrected").
    """
    datasets = open_datasets(paths)
    prepared = prepare(datasets) if prepare else {}
    unknown = [f for f in features if f not in (OBS_ENV_STATE, FUTURE_FRAMES)]
    if unknown:
        raise ValueError(f"training batches can carry {OBS_ENV_STATE} and {FUTURE_FRAMES}, not {unknown[0]}")
    future = (future_steps or chunk_size) if FUTURE_FRAMES in features else 0
    env_dim = feature_dim(datasets, OBS_ENV_STATE) if OBS_ENV_STATE in features else 0
    interface = interface_from_dataset(datasets[0], chunk_size=chunk_size, image_size=image_size, cameras=cameras,
                                       overrides=interface)
    kept = [_kept_episodes(ds, path, drop) for ds, path, drop in zip(datasets, paths, exclude or [[]] * len(paths))]
    notes = []
    for ds, path, eps_kept in zip(datasets, paths, kept):
        for cam in interface.cameras:  # a camera rfm cannot read (16-bit depth) fails now, naming its file and
            if ds.episodes and ds.features[ds.camera_key(cam)]["dtype"] != "video":  # field, not in a worker mid-run
                ds.decode_episode(ds.episodes[0].index, cam, first=1)
        for cam, eps in blank_cameras(ds, interface.cameras).items():
            eps = [e for e in eps if e in set(eps_kept)]  # (an episode excluded already is not worth a word)
            if eps:
                notes.append(f"{ds.root}: camera {cam!r} is one flat colour in episode(s) {listed_episodes(eps)} of "
                             f"{ds.num_episodes} (unplugged or covered while recording?); the model learns from "
                             f"those frames: rfm data view {ds.root} --episode {eps[0]} shows them, "
                             f"--exclude-episodes {path}:{','.join(map(str, eps))} leaves them out")
        timing = tick_timing(ds, set(eps_kept))
        if timing and timing["late_ticks"]:
            eps = timing["episodes_with_late_ticks"]
            notes.append(f"{ds.root}: {timing['late_ticks']} recorded ticks came late (more than "
                         f"{timing['late_after_periods']:g} control periods after the one before; the longest "
                         f"interval {timing['longest_interval_ms']:g} ms at {ds.fps:g} fps) in episode(s) "
                         f"{listed_episodes(eps)}: their actions ran longer than a period, and the model learns them as one; "
                         f"rfm data info {ds.root} shows the timing, --exclude-episodes {path}:"
                         f"{','.join(map(str, eps))} leaves them out")
    first = len(kept[0])
    if val_episodes and val_episodes >= first:
        raise ValueError(f"train.val_episodes={val_episodes}: {paths[0]} has {first} episode(s)"
                         f"{' not excluded' if exclude and exclude[0] else ''}, and at least one must stay for training")
    splits, masks, chosen = [], [], []
    for i, ds in enumerate(datasets):
        episodes = kept[i]
        held = episodes[-val_episodes:] if i == 0 and val_episodes else []
        mask = frame_mask(ds, recorded)
        train = [e for e in episodes if e not in held]
        if mask is not None:  # a recording: only episodes with a frame to learn from
            train = [e for e in train if mask[ds.episode(e).start:ds.episode(e).stop].any()]
            chosen.append({"path": str(paths[i]), "keep": ",".join(recorded or ()), "recording": recording_summary(ds),
                           "episodes": len(train), "frames": int(mask.sum())})
        splits.append((train, held))
        masks.append(mask)
    frame_bytes = len(interface.cameras) * 3 * interface.image_size[0] * interface.image_size[1]
    caches = split_cache(int(frame_cache_gb * 2**30) // cache_copies,
                         [frame_bytes * sum(ds.episode(e).length for e in train) for ds, (train, _) in zip(datasets, splits)])
    train_parts, val_parts, n_train_eps = [], [], 0
    for ds, (train_eps, held), cache, mask in zip(datasets, splits, caches, masks):
        n_train_eps += len(train_eps)
        train_parts.append(WindowDataset(ds, interface, episodes=train_eps, cache_bytes=cache, env_state_dim=env_dim,
                                         future=future, keep=mask))
        if held:
            val_parts.append(WindowDataset(ds, interface, episodes=held, cache_bytes=cache))  # scores actions only
    if not sum(len(w) for w in train_parts):
        found = "; ".join(f"{c['path']}: {c['recording']}" for c in chosen)
        raise ValueError(f"train.recorded_episodes={','.join(recorded or ())}: no frame of {', '.join(map(str, paths))} "
                         f"is left to train on ({found})")
    train_set = ConcatDataset(train_parts)
    tasks = list(dict.fromkeys(t for ds in datasets for t in ds.tasks))
    info = {"dataset": ",".join(str(p) for p in paths), "episodes": n_train_eps,
            "val_episodes": sum(len(v.episodes) for v in val_parts), "frames": len(train_set), "tasks": tasks,
            "fps": datasets[0].fps}
    # where each dataset was, and how many episodes it had then: a recording grows after training, and the
    # training set is its first `episodes_then` episodes (paths as typed, in `dataset`, depend on the directory)
    info["datasets"] = [{"path": str(ds.root.resolve()), "episodes_then": ds.num_episodes,
                         "frames_then": ds.num_frames, "frames": len(w)}
                        | ({"excluded_episodes": sorted(drop)} if drop else {})
                        for ds, w, drop in zip(datasets, train_parts, exclude or [[]] * len(paths))]
    if chosen:
        info["recorded"] = chosen
    info.update(prepared)
    if env_dim:
        info["env_state"] = {"dim": env_dim, "datasets": [str(ds.root) for ds in datasets if OBS_ENV_STATE in ds.features]}
    return TrainingData(interface, train_set, ConcatDataset(val_parts) if val_parts else None,
                        merged_stats(datasets), info, {OBS_ENV_STATE: env_dim} if env_dim else {}, notes)


def _kept_episodes(ds: LeRobotDataset, path: str, drop: list[int]) -> list[int]:
    """The dataset's episode indices less those excluded; ValueError naming an excluded one it does not have."""
    episodes = [e.index for e in ds.episodes]
    missing = sorted(set(drop) - set(episodes))
    if missing:
        raise ValueError(f"train.exclude_episodes: {path} has no episode {missing[0]} (its episodes are "
                         f"{episodes[0]}..{episodes[-1]})" if episodes else f"train.exclude_episodes: {path} has no "
                         f"episodes")
    kept = [e for e in episodes if e not in set(drop)]
    if not kept:
        raise ValueError(f"train.exclude_episodes leaves no episode of {path} ({len(episodes)} excluded): drop it "
                         f"from --dataset instead")
    return kept


def frame_tasks(train_set: ConcatDataset) -> list[str]:
    """The instruction (LeRobot task) of every frame of the training set, in index order."""
    out: list[str] = []
    for part in train_set.datasets:
        ds = part.ds
        out.extend(ds.tasks[int(t)] for t in ds.task_index[part.frames])
    return out


def task_balanced_weights(tasks: list[str]) -> torch.Tensor:
    """Per-frame sampling weights that give each task the same total weight."""
    counts = Counter(tasks)
    return torch.tensor([1.0 / counts[t] for t in tasks], dtype=torch.double)


def sampling_weights(tasks: list[str], sizes: list[int], balance: str,
                     dataset_weights: list[float] | None = None) -> torch.Tensor | None:
    """Per-frame sampling weights, or None where frames are simply shuffled.

    tasks: the task of every training frame (`frame_tasks`); sizes: frames per dataset, in order.
    balance=tasks gives every task the same share. dataset_weights gives dataset i the share w_i / sum(w) of the
    samples (e.g. 0.7 demos, 0.3 fleet recordings), with frames, or tasks under balance=tasks, balanced within it.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance={balance!r}: expected one of {', '.join(BALANCE_MODES)}")
    if dataset_weights is None:
        return task_balanced_weights(tasks) if balance == "tasks" else None
    if len(dataset_weights) != len(sizes):
        raise ValueError(f"{len(dataset_weights)} dataset weights for {len(sizes)} datasets: give one per dataset")
    total = sum(w for w, n in zip(dataset_weights, sizes) if n)
    if total <= 0:
        raise ValueError(f"dataset weights {list(dataset_weights)} give no dataset with frames a positive weight")
    parts, start = [], 0
    for n, w in zip(sizes, dataset_weights):
        own = tasks[start:start + n]
        start += n
        if not n:  # nothing to draw from this dataset
            continue
        base = task_balanced_weights(own) / len(set(own)) if balance == "tasks" else torch.full((n,), 1.0 / n,
                                                                                                dtype=torch.double)
        parts.append(base * (w / total))
    return torch.cat(parts)


class EpochSampler(Sampler[int]):
    """One epoch of frame indices drawn from (seed, epoch) alone: a shuffle, or `weights` drawn with replacement.

    An epoch's order depends on nothing but its number, so a resumed run continues the interrupted epoch where it
    stopped (`skip`) and sees the batches the run would have seen had it not been stopped.
    """

    def __init__(self, n: int, weights: torch.Tensor | None, seed: int) -> None:
        self.n, self.weights, self.seed = n, weights, seed
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, count: int) -> None:
        """Leave out the first `count` indices of the next epoch drawn (those a stopped run already trained on)."""
        self._skip = count

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = (torch.randperm(self.n, generator=g) if self.weights is None
                 else torch.multinomial(self.weights, self.n, replacement=True, generator=g))
        skip, self._skip = self._skip, 0
        yield from order[skip:].tolist()


def make_sampler(weights: torch.Tensor | None, seed: int, n: int | None = None) -> EpochSampler:
    """Frames shuffled uniformly (weights None: `n` frames) or drawn by `weights`, one epoch's worth per epoch."""
    if weights is None and n is None:
        raise ValueError("make_sampler: give the frame weights or the number of frames")
    return EpochSampler(len(weights) if weights is not None else n, weights, seed)


def task_shares(tasks: list[str], weights: torch.Tensor | None) -> dict[str, float]:
    """Expected fraction of samples per task under the sampling weights (for logs and the model card)."""
    w = torch.ones(len(tasks), dtype=torch.double) if weights is None else weights
    total = float(w.sum())
    shares: dict[str, float] = {}
    for t, wi in zip(tasks, w.tolist()):
        shares[t] = shares.get(t, 0.0) + wi
    return {t: round(v / total, 4) for t, v in shares.items()}


__all__ = ["EpochSampler", "TrainingData", "build_training_data", "feature_dim", "frame_tasks", "make_sampler", "merged_stats",
           "open_datasets", "sampling_weights", "split_cache", "task_balanced_weights", "task_shares"]
