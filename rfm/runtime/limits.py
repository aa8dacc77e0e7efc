"""Per-dimension action limits: clip every chunk before it reaches the robot, and say which dims were clipped.

The server clips every answer with them; a device running a model in its own loop clips with the same object:

    runner = load_runner("exports/my-robot")
    limits = ActionLimits.for_model("exports/my-robot")
    actions, clipped_dims = limits.clip(runner.predict(obs))

Limits come from a JSON file ({"min": [...], "max": [...]} or {action_name: [lo, hi]}) or from the stats.json of the
checkpoint or of its `rfm export` directory, which carries the same file (action min/max, widened by a margin that
is a fraction of the range): one path, so both clip identically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfm.constants import ACTION, ACTION_LIMIT_MARGIN, STATS_FILE
from rfm.data.stats import widened_range


@dataclass
class ActionLimits:
    """low/high: (D_a,) float32; `source` says where they came from (for /v1/models and logs)."""

    low: np.ndarray
    high: np.ndarray
    names: list[str]
    source: str

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float32).reshape(-1)
        self.high = np.asarray(self.high, np.float32).reshape(-1)
        if self.low.shape != self.high.shape or self.low.shape[0] != len(self.names):
            raise ValueError(f"{self.source}: limits have {self.low.shape[0]} min and {self.high.shape[0]} max "
                             f"values, the model has {len(self.names)} actions ({', '.join(self.names)})")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.low <= self.high)):
            raise ValueError(f"{self.source}: every action limit must be finite with min <= max")

    def clip(self, actions: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """actions (H, D_a) -> (clipped actions, names of the dims that were clipped)."""
        out = np.clip(actions, self.low, self.high)
        changed = np.any(out != actions, axis=0)
        return out, [self.names[i] for i in np.flatnonzero(changed)]

    def to_dict(self) -> dict:
        r = lambda a: [round(float(v), 6) for v in a]
        return {"source": self.source, "min": r(self.low), "max": r(self.high)}

    @classmethod
    def from_file(cls, path: str | Path, names: list[str]) -> ActionLimits:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: action limits file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if isinstance(data, dict) and "min" in data and "max" in data:
            return cls(data["min"], data["max"], names, str(path))
        if isinstance(data, dict) and set(data) == set(names):
            pairs = [data[n] for n in names]
            if all(isinstance(p, list) and len(p) == 2 for p in pairs):
                return cls([p[0] for p in pairs], [p[1] for p in pairs], names, str(path))
        raise ValueError(f"{path}: expected {{\"min\": [...], \"max\": [...]}} or {{name: [lo, hi]}} for every "
                         f"action {names}, got keys {sorted(data) if isinstance(data, dict) else type(data).__name__}")

    @classmethod
    def for_model(cls, path: str | Path, margin: float = ACTION_LIMIT_MARGIN) -> ActionLimits:
        """The limits `rfm serve --checkpoint path` clips with by default: the stats' action min/max widened by
        `margin` x range, for a checkpoint or an `rfm export` directory."""
        from rfm.runtime.loader import read_interface
        from rfm.runtime.manifest import EXPORT_FILE

        names = read_interface(path, export=(Path(path) / EXPORT_FILE).is_file())[0].action_names
        limits = cls.from_stats(path, names, margin)
        if limits is None:
            raise ValueError(f"{Path(path) / STATS_FILE}: no action min/max to take limits from; give them with "
                             f"ActionLimits.from_file")
        return limits

    @classmethod
    def from_stats(cls, checkpoint: str | Path, names: list[str], margin: float = ACTION_LIMIT_MARGIN) -> ActionLimits | None:
        """Limits from stats.json (checkpoint or export dir) action min/max plus margin*(max-min); None when the
        directory has no stats.json or the stats have no action min/max."""
        path = Path(checkpoint) / STATS_FILE
        if not path.is_file():
            return None
        try:
            stats = json.loads(path.read_text()).get(ACTION) or {}
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{path}: not a JSON object of feature stats ({e})") from e
        bounds = widened_range(stats, margin)
        return None if bounds is None else cls(*bounds, names, f"{path} (min/max with margin {margin:g})")
