"""Which Meta-World tasks a dataset holds, checked against an allowed task set (a base model's pretraining data).

A dataset's tasks are its instructions (meta/tasks); a simulated one also names each episode's env task (episode
metadata `env_task`). Both must belong to the allowed set: an instruction must be one of the allowed tasks'
training sentences (rfm.sim.instructions), an env task one of the allowed names. Anything else is foreign.
A run that starts from a checkpoint inherits what that checkpoint was trained on: its card's training instructions
and its lineage's are checked the same way, and an ancestor whose tasks cannot be told is foreign too.
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


def checkpoint_tasks(path: str | Path) -> dict:
    """{"path", "checkpoint", "instructions", "env_tasks", "unknown"} of a checkpoint: the instructions it and its
    ancestors were trained on (model card meta.data.tasks, lineage entries' `tasks`). An ancestor that records no
    tasks is known only when its datasets are among those of a descendant that does; otherwise it is `unknown`."""
    from rfm.checkpoint import read_config

    meta = read_config(path)[1].get("meta", {})
    instructions = list(meta.get("data", {}).get("tasks") or [])
    known = set(_paths(meta.get("data", {}).get("dataset")))
    unknown = []
    for entry in meta.get("lineage", []):
        name = entry.get("path") or entry.get("model_id") or "?"
        if "average_of" in entry:
            unknown.append(f"{name}: an average of checkpoints")
        elif entry.get("tasks") is not None:
            instructions += [i for i in entry["tasks"] if i not in instructions]
            known |= set(_paths(entry.get("dataset")))
        elif not set(_paths(entry.get("dataset"))) <= known:
            unknown.append(f"{name}: trained on {entry.get('dataset')!r}, whose tasks its card does not record")
    return {"path": str(path), "checkpoint": True, "instructions": instructions, "env_tasks": [], "unknown": unknown}


def _paths(datasets: str | list | None) -> list[str]:
    """A card's `dataset` field (one path, comma-separated paths or a list) as a list of paths."""
    if not datasets:
        return []
    return [p for p in (datasets.split(",") if isinstance(datasets, str) else datasets) if p]


def check_tasks(datasets: list[str], allowed: list[str] | str, checkpoints: list[str] = ()) -> dict:
    """The check's record (allowed tasks, each dataset's tasks, then each starting checkpoint's); TaskCheckError
    naming every foreign task."""
    tasks = expand_tasks(allowed)
    sentences = {INSTRUCTIONS[t][0]: t for t in tasks}
    found, foreign = [], []
    for path, read in [*((p, dataset_tasks) for p in datasets), *((p, checkpoint_tasks) for p in checkpoints)]:
        d = read(path)
        bad = [f"ancestor {u}" for u in d.pop("unknown", [])]
        bad += [repr(i) for i in d["instructions"] if i not in sentences]
        bad += [f"env task {t!r}" for t in d["env_tasks"] if t not in tasks]
        foreign += [f"{path}: {b}" for b in bad]
        d["env_tasks"] = sorted({*d["env_tasks"], *(sentences[i] for i in d["instructions"] if i in sentences)})
        found.append(d)
    if foreign:
        raise TaskCheckError(f"outside the allowed {len(tasks)} tasks "
                             f"({allowed if isinstance(allowed, str) else ','.join(allowed)}): {'; '.join(foreign)}")
    covered = {t for d in found for t in d["env_tasks"]}
    return {"allowed": tasks, "datasets": found, "missing": [t for t in tasks if t not in covered], "passed": True}


def record_check(checkpoint: str | Path, result: dict) -> None:
    """Record a passed check in a checkpoint's config.json meta.data.task_check, which its model card shows."""
    from rfm.checkpoint import read_config, update_meta

    data = dict(read_config(checkpoint)[1].get("meta", {}).get("data", {}))
    data["task_check"] = {"allowed": result["allowed"], "missing": result["missing"], "passed": result["passed"],
                          "datasets": [{"path": d["path"], "env_tasks": d["env_tasks"],
                                        **({"checkpoint": True} if d.get("checkpoint") else {})}
                                       for d in result["datasets"]]}
    update_meta(checkpoint, "data", data)
