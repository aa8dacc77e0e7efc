"""Action relabelling: map one exact value of a named action dimension to another before training.

A scripted expert's labels can mean something other than what a policy needs to imitate: Meta-World's pick-place
expert says 0.0 ("no grip") while approaching, which reopens a closed gripper only slowly (0.3 -> 0.4 open in 30
steps, where -1 opens it fully), so a policy that closed on nothing has no decisive reopen to learn. `gripper:0=-1` turns those labels into an open command. Stats are recomputed from the new labels.
A rule can be scoped to one task (`gripper:0=-1@push the puck to the goal`, or a Meta-World task name such as
`@push-v3` for its training instruction), so tasks whose labels mean something else keep them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfm.config import ConfigError
from rfm.constants import ACTION
from rfm.data import stats as st
from rfm.sim.instructions import instructions_for


@dataclass(frozen=True)
class Relabel:
    """Action `name` equal to `old` (exactly, as scripted labels are) becomes `new`; in frames of `task` only if set."""

    name: str
    old: float
    new: float
    task: str | None = None  # a task string (instruction) as the dataset stores it, or a Meta-World task name

    @classmethod
    def parse(cls, text: str) -> Relabel:
        """'gripper:0=-1[@TASK]' -> Relabel('gripper', 0.0, -1.0, TASK); a malformed rule is a ConfigError quoting it."""
        body, at, task = str(text).partition("@")
        name, _, rule = body.partition(":")
        old, sep, new = rule.partition("=")
        try:
            if not name.strip() or not sep or (at and not task.strip()):
                raise ValueError
            return cls(name.strip(), float(old), float(new), task.strip() or None)
        except ValueError:
            raise ConfigError(f"train.aids.relabel.rules item {text!r} is invalid: expected NAME:OLD=NEW or "
                              f"NAME:OLD=NEW@TASK, e.g. gripper:0=-1 or gripper:0=-1@push-v3") from None

    def __str__(self) -> str:
        return f"{self.name}:{self.old:g}={self.new:g}" + (f"@{self.task}" if self.task else "")

    def task_string(self, known: set[str]) -> str | None:
        """The task string this rule applies to (None: every task); a Meta-World name maps to its instruction."""
        if self.task is None or self.task in known:
            return self.task
        try:
            instruction = instructions_for(self.task)[0]
        except KeyError:
            instruction = None
        if instruction in known:
            return instruction
        raise ConfigError(f"train.aids.relabel.rules item {str(self)!r}: no training frame has task {self.task!r}; "
                          f"the datasets' tasks are {', '.join(repr(t) for t in sorted(known))}")


def relabel_actions(datasets: list, rules: list[Relabel]) -> dict[str, int]:
    """Apply `rules` to each dataset's actions in memory (files untouched) and refresh its action stats.

    Returns {rule: frames changed over all datasets}; a rule naming no action of the robot, or a task no dataset
    has, is a ConfigError.
    """
    names = list(datasets[0].action_names)  # datasets trained together share them (open_datasets checks)
    unknown = [r.name for r in rules if r.name not in names]
    if unknown:
        raise ConfigError(f"train.aids.relabel.rules names {unknown[0]!r}, not an action of {datasets[0].root}: its "
                          f"actions are {', '.join(names)}")
    known = {t for ds in datasets for t in ds.tasks}
    scopes = [r.task_string(known) for r in rules]
    changed = {str(r): 0 for r in rules}
    for ds in datasets:
        actions = np.array(ds.actions, dtype=np.float32)  # a writable copy
        for r, scope in zip(rules, scopes):
            col = names.index(r.name)
            hit = actions[:, col] == np.float32(r.old)
            if scope is not None:
                hit &= np.isin(ds.task_index, [i for i, t in enumerate(ds.tasks) if t == scope])
            actions[hit, col] = r.new
            changed[str(r)] += int(hit.sum())
        ds.actions = actions
        ds.stats = {**ds.stats, ACTION: st.vector_stats(actions)}
    return changed
