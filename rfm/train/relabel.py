"""Action relabelling: map one exact value of a named action dimension to another before training.

A scripted expert's labels can mean something other than what a policy needs to imitate: Meta-World's pick-place
expert says 0.0 ("no grip") while approaching, which reopens a closed gripper only slowly (0.3 -> 0.4 open in 30
steps, where -1 opens it fully), so a policy that closed on nothing has no decisive reopen to learn (RESULTS.md
session 29). `gripper:0=-1` turns those labels into an open command. Stats are recomputed from the new labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rfm.config import ConfigError
from rfm.constants import ACTION
from rfm.data import stats as st


@dataclass(frozen=True)
class Relabel:
    """Action `name` equal to `old` (exactly, as scripted labels are) becomes `new`."""

    name: str
    old: float
    new: float

    @classmethod
    def parse(cls, text: str) -> Relabel:
        """'gripper:0=-1' -> Relabel('gripper', 0.0, -1.0); a malformed rule is a ConfigError quoting it."""
        name, _, rule = str(text).partition(":")
        old, sep, new = rule.partition("=")
        try:
            if not name.strip() or not sep:
                raise ValueError
            return cls(name.strip(), float(old), float(new))
        except ValueError:
            raise ConfigError(f"train.relabel_actions item {text!r} is invalid: expected NAME:OLD=NEW, "
                              f"e.g. gripper:0=-1") from None

    def __str__(self) -> str:
        return f"{self.name}:{self.old:g}={self.new:g}"


def relabel_actions(datasets: list, rules: list[Relabel]) -> dict[str, int]:
    """Apply `rules` to each dataset's actions in memory (files untouched) and refresh its action stats.

    Returns {rule: frames changed over all datasets}; a rule naming no action of the robot is a ConfigError.
    """
    names = list(datasets[0].action_names)  # datasets trained together share them (open_datasets checks)
    unknown = [r.name for r in rules if r.name not in names]
    if unknown:
        raise ConfigError(f"train.relabel_actions names {unknown[0]!r}, not an action of {datasets[0].root}: its "
                          f"actions are {', '.join(names)}")
    changed = {str(r): 0 for r in rules}
    for ds in datasets:
        actions = np.array(ds.actions, dtype=np.float32)  # a writable copy
        for r in rules:
            col = names.index(r.name)
            hit = actions[:, col] == np.float32(r.old)
            actions[hit, col] = r.new
            changed[str(r)] += int(hit.sum())
        ds.actions = actions
        ds.stats = {**ds.stats, ACTION: st.vector_stats(actions)}
    return changed
