"""Several datasets trained together (flywheel aggregation) and task-balanced sampling, on real files on disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rfm.config import ConfigError
from rfm.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from rfm.train.config import TrainConfig
from rfm.train.data import (
    build_training_data,
    frame_tasks,
    make_sampler,
    merged_stats,
    sampling_weights,
    split_cache,
    task_shares,
)
from rfm.train.loop import train


def _write(root: Path, lengths: tuple[int, ...], tasks: list[str], state_names=("x", "y"), offset: float = 0.0,
           seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = LeRobotDatasetWriter(root, fps=10, cameras={"cam": (32, 32)}, state_names=list(state_names),
                             action_names=["a", "b"], use_videos=False)
    for ep, n in enumerate(lengths):
        for _ in range(n):
            w.add_frame(images={"cam": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
                        state=rng.standard_normal(len(state_names)).astype(np.float32),
                        action=(rng.standard_normal(2) + offset).astype(np.float32), task=tasks[ep % len(tasks)])
        w.save_episode()
    w.finalize()
    return root


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("multi")
    # "reach" episodes are short, "door" long: uniform sampling sees door 4x as often
    demos = _write(base / "demos", (5, 20, 5, 20), ["reach", "door"])
    field = _write(base / "field", (10, 10), ["reach"], offset=3.0, seed=1)
    return demos, field


def test_windows_carry_future_frames_at_the_asked_horizon(two):
    """The world-model objective's frames: one chunk ahead by default, or future_steps ahead."""
    from rfm.constants import FUTURE_FRAMES

    demos, _ = two
    for steps, ahead in ((None, 4), (7, 7)):
        data = build_training_data([str(demos)], chunk_size=4, image_size=None, cameras=None, val_episodes=0,
                                   features=(FUTURE_FRAMES,), future_steps=steps)
        windows = data.train_set.datasets[0]
        assert np.array_equal(windows[5]["future_images"], windows[5 + ahead]["images"])  # episode 1 (20 frames)


def test_two_datasets_make_one_training_set_with_merged_stats(two):
    demos, field = two
    data = build_training_data([str(demos), str(field)], chunk_size=4, image_size=None, cameras=None, val_episodes=1)
    assert len(data.train_set) == 50 - 20 + 20  # last demo episode held out for validation
    assert len(data.val_set) == 20
    assert data.info["episodes"] == 5 and data.info["frames"] == 30 + 20
    assert [d["frames"] for d in data.info["datasets"]] == [30, 20]
    a = np.concatenate([LeRobotDataset(demos).actions, LeRobotDataset(field).actions])
    np.testing.assert_allclose(data.stats["action"]["mean"], a.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.stats["action"]["std"], a.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.stats["action"]["max"], a.max(0))
    # an item from the second dataset comes with its own instruction and actions
    item = data.train_set[len(data.train_set) - 1]
    assert item["instruction"] == "reach" and item["images"].shape == (1, 3, 32, 32)


def test_single_dataset_keeps_its_own_stats(two):
    ds = LeRobotDataset(two[0])
    assert merged_stats([ds]) is ds.stats


def test_task_balanced_sampler_gives_each_task_the_same_share(two):
    data = build_training_data([str(two[0])], 4, None, None, 0)
    tasks = frame_tasks(data.train_set)
    assert Counter(tasks) == {"reach": 10, "door": 40}
    sampler = make_sampler(sampling_weights(tasks, [len(tasks)], "tasks"), seed=0)
    drawn = Counter(tasks[i] for epoch in range(40) for i in _epoch(sampler, epoch))
    share = drawn["reach"] / sum(drawn.values())
    assert 0.45 < share < 0.55  # uniform sampling would give 0.2
    assert sampling_weights(tasks, [len(tasks)], "none") is None
    shuffled = make_sampler(None, seed=0, n=len(tasks))
    assert sorted(_epoch(shuffled, 3)) == list(range(len(tasks)))  # without weights: each frame once an epoch


def _epoch(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_an_epochs_order_depends_on_its_number_alone_and_a_resumed_epoch_skips_what_was_trained():
    """What lets a resumed run see the batches the stopped run would have seen next."""
    for weights in (None, torch.tensor([1.0, 3.0] * 10, dtype=torch.double)):
        a, b = make_sampler(weights, seed=5, n=20), make_sampler(weights, seed=5, n=20)
        first, second = _epoch(a, 0), _epoch(a, 1)
        assert first != second and len(first) == len(second) == len(a) == 20
        assert _epoch(b, 1) == second and _epoch(b, 0) == first  # in any order, as after a resume
        b.skip(8)
        assert _epoch(b, 1) == second[8:] and _epoch(b, 1) == second  # the skip is for one epoch only
        assert _epoch(make_sampler(weights, seed=6, n=20), 1) != second


def test_dataset_weights_set_each_datasets_share_of_the_samples(two):
    demos, field = two
    data = build_training_data([str(demos), str(field)], 4, None, None, 0)
    tasks, sizes = frame_tasks(data.train_set), [len(p) for p in data.train_set.datasets]
    assert sizes == [50, 20]
    sampler = make_sampler(sampling_weights(tasks, sizes, "none", [3, 1]), seed=0)
    drawn = [i for epoch in range(20) for i in _epoch(sampler, epoch)]
    from_field = sum(i >= 50 for i in drawn) / len(drawn)
    assert 0.22 < from_field < 0.28  # a quarter, where frame counts alone would give 20/70 = 0.29
    # tasks balanced inside each dataset: the demos' three quarters split evenly between reach and door
    weights = sampling_weights(tasks, sizes, "tasks", [3, 1])
    assert task_shares(tasks, weights) == {"reach": 0.625, "door": 0.375}
    assert task_shares(tasks, None) == {"reach": round(30 / 70, 4), "door": round(40 / 70, 4)}
    assert float(sampling_weights(tasks, sizes, "none", [1, 0])[50:].sum()) == 0.0  # weight 0: never drawn
    empty_third = sampling_weights(tasks, sizes + [0], "tasks", [3, 1, 5])  # a dataset without frames takes no share
    assert len(empty_third) == 70 and task_shares(tasks, empty_third) == {"reach": 0.625, "door": 0.375}
    with pytest.raises(ValueError, match="2 dataset weights for 3 datasets"):
        sampling_weights(tasks, sizes + [0], "none", [1, 1])


def test_dataset_weights_are_checked_against_the_datasets(two):
    demos, field = two
    with pytest.raises(ConfigError, match="dataset_weights has 1 values for 2 datasets"):
        TrainConfig(dataset=f"{demos},{field}", out="x", dataset_weights=[1.0])
    with pytest.raises(ConfigError, match="dataset_weights"):
        TrainConfig(dataset=f"{demos},{field}", out="x", dataset_weights=[-1, 2])


def test_excluded_episodes_are_left_out_of_training_and_validation(two, tmp_path, capsys):
    """A bad demo (a covered camera, a stalled loop, a fumble) is left out by index, per dataset; the model card
    says which; indices the dataset does not have, or a dataset that is not trained on, are refused by name."""
    from rfm.cli.main import main

    demos, field = two
    data = build_training_data([str(demos), str(field)], 4, None, None, 1, exclude=[[1], [0]])
    assert [[e.index for e in p.episodes] for p in data.train_set.datasets] == [[0, 2], [1]]  # 3: validation
    assert [e.index for e in data.val_set.datasets[0].episodes] == [3]
    assert [d.get("excluded_episodes") for d in data.info["datasets"]] == [[1], [0]]
    with pytest.raises(ValueError, match=r"demos has no episode 9 \(its episodes are 0..3\)"):
        build_training_data([str(demos)], 4, None, None, 0, exclude=[[9]])
    with pytest.raises(ConfigError, match="exclude_episodes names 'elsewhere', which is not one of train.dataset"):
        TrainConfig(dataset=f"{demos},{field}", out="x", exclude_episodes={"elsewhere": [1]})
    cfg = TrainConfig(dataset=f"{demos},{field}", out="x", exclude_episodes={f"{field}/": 1})
    assert cfg.exclude_episodes == {str(field): [1]}  # the same directory, written otherwise
    out = str(tmp_path / "run")
    argv = ["train", "--dataset", f"{demos},{field}", "--out", out, "--preset", "tiny", "--steps", "2",
            "--batch-size", "4", "--chunk-size", "4", "--num-workers", "0", "--warmup-steps", "1", "--no-progress"]
    assert main([*argv, "--exclude-episodes", f"{demos}:0,2-3", "--exclude-episodes", f"{field}:1"]) == 0
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())["meta"]
    assert [d.get("excluded_episodes") for d in meta["data"]["datasets"]] == [[0, 2, 3], [1]]
    assert main([*argv, "--overwrite", "--exclude-episodes", "1"]) == 2  # which dataset? said, not guessed
    assert "with several datasets, name the one: DATASET:EPISODES" in capsys.readouterr().err


def test_mismatched_robot_is_refused_with_the_dataset_named(two, tmp_path):
    other = _write(tmp_path / "other_robot", (5,), ["reach"], state_names=("q1", "q2"))
    with pytest.raises(ValueError, match="other_robot.*state_names"):
        build_training_data([str(two[0]), str(other)], 4, None, None, 0)


def test_train_on_two_datasets_records_them_in_the_checkpoint(two, tmp_path):
    demos, field = two
    cfg = TrainConfig(dataset=f"{demos},{field}", out=str(tmp_path / "run"), preset="tiny", steps=4, batch_size=8,
                      chunk_size=4, num_workers=0, save_every=4, log_every=2, warmup_steps=1, balance="tasks",
                      dataset_weights=[0.8, 0.2])
    ckpt = train(cfg, progress=False)
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    assert meta["data"]["dataset"] == f"{demos},{field}"
    assert meta["data"]["balance"] == "tasks" and meta["data"]["task_shares"] == {"reach": 0.6, "door": 0.4}
    assert [d["share"] for d in meta["data"]["datasets"]] == [0.8, 0.2]
    # where each was and how many episodes it had: a recording grows after training, its first N were trained on
    assert [(d["path"], d["episodes_then"]) for d in meta["data"]["datasets"]] == [
        (str(p.resolve()), LeRobotDataset(p).num_episodes) for p in (demos, field)]
    assert meta["training"]["dataset_weights"] == [0.8, 0.2]
    assert meta["training"]["steps_done"] == 4


def test_frame_cache_is_shared_in_proportion_to_what_each_dataset_needs():
    assert split_cache(100, [10, 30]) == [40, 60]  # room for everything: the spare is split evenly
    assert split_cache(100, [300, 100]) == [75, 25]  # too small: each gets the same fraction of its need
    assert split_cache(100, [0, 0]) == [50, 50]


def test_frame_cache_budget_is_shared_by_the_loader_workers(two):
    """--frame-cache-gb bounds the memory of all workers together: each worker process keeps its own copy."""
    budget = 1.0
    one = build_training_data([str(p) for p in two], 4, None, None, 0, frame_cache_gb=budget)
    both = build_training_data([str(p) for p in two], 4, None, None, 0, frame_cache_gb=budget, cache_copies=2)
    held = [sum(part.cache.max_bytes for part in d.train_set.datasets) for d in (one, both)]
    assert held[0] <= budget * 2**30 and 2 * held[1] <= budget * 2**30
    assert held[1] >= held[0] // 2 - 2


def test_frame_cache_budget_counts_the_training_processes_on_the_machine(monkeypatch):
    """torchrun / accelerate launch set LOCAL_WORLD_SIZE: N processes share the budget instead of each taking it."""
    from rfm.train.launch import local_processes

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_processes() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_processes() == 4
