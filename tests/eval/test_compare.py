"""`rfm compare`: two evaluation results paired by seed — counts, exact McNemar p, skipped tasks, clear errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rfm.eval.compare import PairedCounts, compare, format_comparison


def _write(path: Path, outcomes: dict[str, dict[int, bool]]) -> Path:
    tasks = {t: {"success_rate": sum(r.values()) / len(r), "episodes": len(r),
                 "rollouts": [{"seed": s, "success": ok, "steps": 10} for s, ok in r.items()]}
             for t, r in outcomes.items()}
    path.write_text(json.dumps({"tasks": tasks, "mean_success_rate": 0.0}))
    return path


def _rfm_compare(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rfm.cli.main", "compare", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


def test_counts_pair_episodes_by_seed_and_skip_what_only_one_ran(tmp_path):
    a = _write(tmp_path / "a.json", {"reach-v3": {1: True, 2: True, 3: False, 4: False, 9: True},
                                     "push-v3": {1: True}, "peg-insert-side-v3": {5: True}})
    b = _write(tmp_path / "b.json", {"reach-v3": {4: True, 3: False, 2: True, 1: False},  # seed 9 missing
                                     "push-v3": {2: True}, "door-open-v3": {1: True}})
    cmp = compare(a, b)
    assert cmp.tasks == {"reach-v3": PairedCounts(both=1, only_a=1, only_b=1, neither=1)}
    assert cmp.skipped == {"push-v3": "no seed in common", "peg-insert-side-v3": "only in A",
                           "door-open-v3": "only in B",
                           "reach-v3 (in part)": "1 of A's 5 and 0 of B's 4 episodes ran seeds the other did not"}
    text = format_comparison(cmp)
    assert "reach-v3" in text and "skipped door-open-v3: only in B" in text


def test_seed_blocks_pool_and_a_seed_run_twice_is_refused(tmp_path):
    a1 = _write(tmp_path / "a1.json", {"reach-v3": {1: True, 2: False}, "push-v3": {1: False}})
    a2 = _write(tmp_path / "a2.json", {"reach-v3": {51: True, 52: True}})
    b1 = _write(tmp_path / "b1.json", {"reach-v3": {1: True, 2: True}, "push-v3": {1: True}})
    b2 = _write(tmp_path / "b2.json", {"reach-v3": {51: False, 52: True}})
    cmp = compare(f"{a1},{a2}", f"{b1},{b2}")
    assert cmp.tasks == {"reach-v3": PairedCounts(both=2, only_a=1, only_b=1, neither=0),
                         "push-v3": PairedCounts(only_b=1)}
    assert cmp.pooled.episodes == 5
    with pytest.raises(ValueError, match=r"a1.json: reach-v3 seed 1 is also in .*a1.json"):
        compare(f"{a1},{a1}", b1)


def test_training_runs_pair_in_order_and_their_counts_add(tmp_path):
    """Two training runs per recipe on the same evaluation seeds: run 1 of A pairs with run 1 of B, never with B's
    run 2, and the comparison sums both runs' counts and keeps each run's."""
    a1 = _write(tmp_path / "a1.json", {"reach-v3": {1: True, 2: False, 3: False}})
    a2 = _write(tmp_path / "a2.json", {"reach-v3": {1: False, 2: False, 3: True}})
    b1 = _write(tmp_path / "b1.json", {"reach-v3": {1: True, 2: True, 3: True}})
    b2 = _write(tmp_path / "b2.json", {"reach-v3": {1: False, 2: False, 3: False}})
    cmp = compare(f"{a1}+{a2}", f"{b1}+{b2}")
    assert cmp.runs == (PairedCounts(both=1, only_b=2), PairedCounts(only_a=1, neither=2))
    assert cmp.tasks == {"reach-v3": PairedCounts(both=1, only_a=1, only_b=2, neither=2)}
    assert "training run 2 (3)" in format_comparison(cmp)
    assert compare(a1, b1).runs == ()
    with pytest.raises(ValueError, match="A has 2 training runs and B has 1"):
        compare(f"{a1}+{a2}", b1)


def test_mcnemar_p_value_and_paired_standard_error():
    assert PairedCounts(both=28, only_a=0, only_b=4, neither=18).p_value == pytest.approx(2 / 16)
    assert PairedCounts(both=5, neither=5).p_value == 1.0  # no discordant episode: no evidence either way
    assert PairedCounts(only_b=10).p_value == pytest.approx(2 / 1024)
    c = PairedCounts(both=40, only_a=2, only_b=6, neither=52)
    assert c.rate_b - c.rate_a == pytest.approx(0.04)
    assert c.diff_se == pytest.approx(((8 / 100 - 0.04**2) / 100) ** 0.5)


def test_means_and_pooled_counts_follow_from_the_paired_rollouts(tmp_path):
    """Ten tasks of 50 seeds (an MT10 evaluation's shape): the means are the mean per-task success rates over the
    seeds both ran, and the pooled counts add up the paired outcomes."""
    rng = random.Random(23)
    seeds = range(1_000_000, 1_000_050)
    a = {f"task{i}-v3": {s: rng.random() < 0.2 + 0.07 * i for s in seeds} for i in range(10)}
    b = {t: {s: ok if rng.random() < 0.9 else not ok for s, ok in runs.items()} for t, runs in a.items()}
    a["task0-v3"][2_000_000] = True  # a seed only A ran: left out of both means and the counts
    cmp = compare(_write(tmp_path / "a.json", a), _write(tmp_path / "b.json", b))
    assert len(cmp.tasks) == 10 and list(cmp.skipped) == ["task0-v3 (in part)"]  # said, not counted
    paired = {t: [(a[t][s], b[t][s]) for s in seeds] for t in a}
    assert cmp.mean_a == pytest.approx(sum(sum(x for x, _ in p) / len(p) for p in paired.values()) / 10)
    assert cmp.mean_b == pytest.approx(sum(sum(y for _, y in p) / len(p) for p in paired.values()) / 10)
    pairs = [xy for p in paired.values() for xy in p]
    pooled = cmp.pooled
    assert (pooled.episodes, pooled.both, pooled.only_a, pooled.only_b, pooled.neither) == (
        500, pairs.count((True, True)), pairs.count((True, False)), pairs.count((False, True)),
        pairs.count((False, False)))
    assert pooled.only_a + pooled.only_b > 0 and cmp.mean_b - cmp.mean_a == pytest.approx(
        (pooled.only_b - pooled.only_a) / 500)  # equal-sized tasks: the mean difference is the pooled one


@pytest.mark.integration
def test_cli_writes_comparison_json_and_names_bad_files(tmp_path):
    a = _write(tmp_path / "a.json", {"reach-v3": {1: True, 2: False}})
    b = _write(tmp_path / "b.json", {"reach-v3": {1: True, 2: True}})
    out = tmp_path / "cmp.json"
    proc = _rfm_compare(a, b, "--out", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["tasks"]["reach-v3"]["only_b"] == 1 and res["mean_success_rate_b"] == 1.0
    assert res["pooled"]["diff"] == pytest.approx(0.5) and "reach-v3" in proc.stdout

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"tasks": {"reach-v3": {"success_rate": 0.5, "episodes": 2}}}))
    proc = _rfm_compare(a, old)
    assert proc.returncode == 2 and "old.json: tasks.reach-v3 has no 'rollouts'" in proc.stderr
    proc = _rfm_compare(a, tmp_path / "missing.json")
    assert proc.returncode == 2 and "missing.json: results file not found" in proc.stderr
