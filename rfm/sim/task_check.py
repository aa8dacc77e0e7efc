"""Which Meta-World tasks a dataset holds, checked against an allowed task set (a base model's pretraining data).

A dataset's tasks are its instructions (meta/tasks); a simulated one also names each episode's env task (episode
metadata `env_task`). Both must belong to the allowed set: an instruction must be one of the allowed tasks'
training sentences (rfm.sim.instructions), an env task one of the allowed names. Anything else is foreign.
"""

from __future__ import annotations

from pathlib import Path

from rfm.sim.instructions import INSTRUCTIONS
from rfm.sim.metaworld import expand_tasks


class TaskCheckError(ValueError):
    """A dataset holds a task outside the allowed set (the message names it and the dataset)."""


def dataset_tasks(path: str | Path) -> dict:
    """{"path", "instructions", "env_tasks"} of one LeRobot dataset: its meta/tasks and its episodes' env tasks."""
    from rfm.data.reader import LeRobotDataset

    ds = LeRobotDataset(path)
    env_tasks = sorted({str(ep.meta["env_task"]) for ep in ds.episodes if ep.meta.get("env_task") is not None})
    return {"path": str(path), "instructions": list(ds.tasks), "env_tasks": env_tasks}


def check_tasks(datasets: list[str], allowed: list[str] | str) -> dict:
    """The check's record (allowed tasks, each dataset's tasks); TaskCheckError naming every foreign task."""
    tasks = expand_tasks(allowed)
    sentences = {INSTRUCTIONS[t][0]: t for t in tasks}
    found, foreign = [], []
    for path in datasets:
        d = dataset_tasks(path)
        bad = [repr(i) for i in d["instructions"] if i not in sentences]
        bad += [f"env task {t!r}" for t in d["env_tasks"] if t not in tasks]
        foreign += [f"{path}: {b}" for b in bad]
        d["env_tasks"] = sorted({*d["env_tasks"], *(sentences[i] for i in d["instructions"] if i in sentences)})
        found.append(d)
    if foreign:
        raise TaskCheckError(f"{len(foreign)} task(s) outside the allowed {len(tasks)} "
                             f"({allowed if isinstance(allowed, str) else ','.join(allowed)}): {'; '.join(foreign)}")
    covered = {t for d in found for t in d["env_tasks"]}
    return {"allowed": tasks, "datasets": found, "missing": [t for t in tasks if t not in covered], "passed": True}


def record_check(checkpoint: str | Path, result: dict) -> None:
    """Record a passed check in a checkpoint's config.json meta.data.task_check, which its model card shows."""
    from rfm.checkpoint import read_config, update_meta

    data = dict(read_config(checkpoint)[1].get("meta", {}).get("data", {}))
    data["task_check"] = {"allowed": result["allowed"], "missing": result["missing"], "passed": result["passed"],
                          "datasets": [{"path": d["path"], "env_tasks": d["env_tasks"]} for d in result["datasets"]]}
    update_meta(checkpoint, "data", data)
