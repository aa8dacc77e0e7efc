"""Paired comparison of two `rfm eval` results on the same seeds: which episodes each one alone solved, and whether
the difference is more than noise (exact McNemar test), since 50-episode success rates differ by chance alone.
Either side may pool several results files run on different seed blocks ("a.json,a2.json"), and several training
runs of one recipe ("a-run1.json+a-run2.json"), paired run by run with the other side's."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PairedCounts:
    """Outcomes of the episodes both results ran with the same seed: success in both, in A only, in B only, neither."""

    both: int = 0
    only_a: int = 0
    only_b: int = 0
    neither: int = 0

    @property
    def episodes(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def rate_a(self) -> float:
        return (self.both + self.only_a) / max(self.episodes, 1)

    @property
    def rate_b(self) -> float:
        return (self.both + self.only_b) / max(self.episodes, 1)

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar p-value: under 'no difference' each discordant episode is a fair coin."""
        n, k = self.only_a + self.only_b, min(self.only_a, self.only_b)
        if n == 0:
            return 1.0
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
        return min(1.0, 2.0 * tail)

    @property
    def diff_se(self) -> float:
        """Standard error of rate_b - rate_a for paired episodes (smaller than for two independent samples)."""
        n = self.episodes
        if n == 0:
            return 0.0
        d = (self.only_b - self.only_a) / n
        return math.sqrt(max((self.only_a + self.only_b) / n - d * d, 0.0) / n)

    def __add__(self, other: PairedCounts) -> PairedCounts:
        return PairedCounts(self.both + other.both, self.only_a + other.only_a, self.only_b + other.only_b,
                            self.neither + other.neither)


@dataclass(frozen=True)
class Comparison:
    """Per-task paired counts of results A and B, the tasks only one of them ran, and the pooled counts."""

    a: str
    b: str
    tasks: dict[str, PairedCounts]
    skipped: dict[str, str]
    runs: tuple[PairedCounts, ...] = ()  # pooled counts of each training run, when A and B hold several ("+")

    @property
    def pooled(self) -> PairedCounts:
        total = PairedCounts()
        for c in self.tasks.values():
            total = total + c
        return total

    @property
    def mean_a(self) -> float:
        return sum(c.rate_a for c in self.tasks.values()) / max(len(self.tasks), 1)

    @property
    def mean_b(self) -> float:
        return sum(c.rate_b for c in self.tasks.values()) / max(len(self.tasks), 1)

    def to_dict(self) -> dict:
        def row(c: PairedCounts) -> dict:
            return {**asdict(c), "episodes": c.episodes, "success_rate_a": c.rate_a, "success_rate_b": c.rate_b,
                    "diff": c.rate_b - c.rate_a, "diff_se": c.diff_se, "p_value": c.p_value}

        return {"a": self.a, "b": self.b, "tasks": {t: row(c) for t, c in self.tasks.items()},
                "mean_success_rate_a": self.mean_a, "mean_success_rate_b": self.mean_b,
                "pooled": row(self.pooled), "skipped": self.skipped, "runs": [row(c) for c in self.runs]}


def load_rollouts(path: str | Path) -> dict[str, dict[int, bool]]:
    """{task: {seed: success}} from an `rfm eval --out` JSON; errors name the file and the missing field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{path}: no 'tasks' object (expected the JSON written by `rfm eval --out`)")
    out = {}
    for task, res in tasks.items():
        rollouts = res.get("rollouts") if isinstance(res, dict) else None
        if not isinstance(rollouts, list):
            raise ValueError(f"{path}: tasks.{task} has no 'rollouts' list of per-seed outcomes "  # noqa: TRY004
                             "(compare takes files written by `rfm eval --out` or `rfm adapt`; older ones lack it: "
                             "rerun the evaluation)")
        try:
            out[task] = {int(r["seed"]): bool(r["success"]) for r in rollouts}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tasks.{task}.rollouts entries need 'seed' and 'success'") from None
    return out


def load_pooled(spec: str | Path) -> dict[str, dict[int, bool]]:
    """The rollouts of one results file, or of several joined by commas (seed blocks of one model, pooled);
    a seed that two of them both ran is an error, since pooling would count that episode twice."""
    merged: dict[str, dict[int, bool]] = {}
    origin: dict[tuple[str, int], str] = {}
    for path in [p for p in str(spec).split(",") if p]:
        for task, seeds in load_rollouts(path).items():
            for seed, ok in seeds.items():
                if (task, seed) in origin:
                    raise ValueError(f"{path}: {task} seed {seed} is also in {origin[task, seed]}; "
                                     "pool only results of different seeds")
                origin[task, seed] = path
                merged.setdefault(task, {})[seed] = ok
    if not merged:
        raise ValueError(f"{spec!r}: no results file named")
    return merged


def compare(a: str | Path, b: str | Path) -> Comparison:
    """Pair the episodes of results A and B by task and seed; tasks or seeds only one of them ran are left out.
    A and B are each one results file or several joined by commas (see `load_pooled`); training runs of one recipe
    are joined by '+' on both sides and paired in order (A's first run with B's first), their counts summed, since
    two runs of one recipe on the same demos can differ by more than one evaluation resolves."""
    runs_a, runs_b = str(a).split("+"), str(b).split("+")
    if len(runs_a) != len(runs_b):
        raise ValueError(f"A has {len(runs_a)} training runs and B has {len(runs_b)} ('+' joins runs); give both "
                         "sides the same number, paired in order")
    tasks: dict[str, PairedCounts] = {}
    skipped: dict[str, str] = {}
    runs = []
    for i, (spec_a, spec_b) in enumerate(zip(runs_a, runs_b)):
        run_tasks, run_skipped = _pair(load_pooled(spec_a), load_pooled(spec_b))
        if not run_tasks:
            why = "; ".join(f"{t}: {w}" for t, w in run_skipped.items())
            raise ValueError(f"{spec_a} and {spec_b}: no episode to pair, no task run on the same seeds in both "
                             f"({why})")
        for task, counts in run_tasks.items():
            tasks[task] = tasks.get(task, PairedCounts()) + counts
        for task, why in run_skipped.items():
            skipped[task if len(runs_a) == 1 else f"{task} (run {i + 1})"] = why
        runs.append(sum(run_tasks.values(), PairedCounts()))
    return Comparison(str(a), str(b), tasks, skipped, tuple(runs) if len(runs) > 1 else ())


def _pair(ra: dict[str, dict[int, bool]], rb: dict[str, dict[int, bool]]) -> tuple[dict, dict]:
    """({task: PairedCounts}, {task: why skipped}) of two pooled rollout sets."""
    tasks, skipped = {}, {}
    for task in list(ra) + [t for t in rb if t not in ra]:
        if task not in ra or task not in rb:
            skipped[task] = f"only in {'A' if task in ra else 'B'}"
            continue
        seeds = ra[task].keys() & rb[task].keys()
        if not seeds:
            skipped[task] = "no seed in common"
            continue
        only_a, only_b = len(ra[task]) - len(seeds), len(rb[task]) - len(seeds)
        if only_a or only_b:  # left out of the counts: say so rather than shrink the sample silently
            skipped[f"{task} (in part)"] = (f"{only_a} of A's {len(ra[task])} and {only_b} of B's {len(rb[task])} "
                                            f"episodes ran seeds the other did not")
        counts = [0, 0, 0, 0]  # indexed by (success in A) * 2 + (success in B)
        for s in seeds:
            counts[2 * ra[task][s] + rb[task][s]] += 1
        tasks[task] = PairedCounts(both=counts[3], only_a=counts[2], only_b=counts[1], neither=counts[0])
    return tasks, skipped


def format_comparison(cmp: Comparison) -> str:
    """A table: success rates of A and B, B − A in points, episodes only one solved, McNemar p."""
    lines = [f"A: {cmp.a}", f"B: {cmp.b}",
             f"{'task':28s} {'A':>6s} {'B':>6s} {'B-A':>6s} {'±se':>5s} {'only A':>7s} {'only B':>7s} {'p':>6s}"]

    def line(name: str, ra: float, rb: float, c: PairedCounts) -> str:
        return (f"{name:28s} {100 * ra:5.1f}% {100 * rb:5.1f}% {100 * (rb - ra):+6.1f} {100 * c.diff_se:5.1f} "
                f"{c.only_a:7d} {c.only_b:7d} {c.p_value:6.3f}")

    for task, c in cmp.tasks.items():
        lines.append(line(task, c.rate_a, c.rate_b, c))
    pooled = cmp.pooled
    lines.append(line(f"mean ({pooled.episodes} paired episodes)", cmp.mean_a, cmp.mean_b, pooled))
    for i, c in enumerate(cmp.runs):
        lines.append(line(f"  training run {i + 1} ({c.episodes})", c.rate_a, c.rate_b, c))
    for task, why in cmp.skipped.items():
        lines.append(f"skipped {task}: {why}")
    return "\n".join(lines)
