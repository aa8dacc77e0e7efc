"""What a recording (`rfm serve --record`) says about its episodes, and which of its frames a fine-tune learns from.

A fleet's recording holds what the robots did: episodes that succeeded, episodes that failed, and ticks an operator
corrected. Learning from all of it teaches the failures as well; the usual choice is the successful episodes plus
the corrected ticks (the interventions of HG-DAgger-style supervision). Datasets that are not recordings (the
demonstrations) are always used whole.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from rfm.constants import (
    CORRECTED,
    EARLY_TICK_PERIODS,
    ENDED_BY,
    FIRST_TICK,
    LATE_TICK_PERIODS,
    MODEL,
    OUTCOME,
    SESSION,
    SUCCESS,
    TICK_TIME,
)

if TYPE_CHECKING:
    from rfm.data.episode import Episode
    from rfm.data.reader import LeRobotDataset

OUTCOMES = ("success", "failure", "unknown")
KINDS = (*OUTCOMES, "corrected")  # what `--recorded-episodes` may keep


def is_recording(ds: LeRobotDataset) -> bool:
    """Whether the dataset was recorded by `rfm serve --record` (it has the correction column)."""
    return CORRECTED in ds.features


def episode_outcome(ds: LeRobotDataset, ep: Episode) -> str:
    """success | failure | unknown, as the recorder stored it; for recordings made before it stored outcomes,
    success where a frame says so, else unknown (their False also meant "not reported")."""
    return _outcome(ep, _column(ds, SUCCESS))


def _outcome(ep: Episode, success: np.ndarray | None) -> str:
    """episode_outcome, given the dataset's per-frame success column (read once for all its episodes)."""
    stored = ep.meta.get(OUTCOME)
    if stored in OUTCOMES:
        return stored
    return "success" if success is not None and success[ep.start:ep.stop].any() else "unknown"


def _outcomes(ds: LeRobotDataset) -> dict[int, str]:
    """episode_outcome of every episode."""
    success = _column(ds, SUCCESS)
    return {ep.index: _outcome(ep, success) for ep in ds.episodes}


def parse_kinds(spec: str) -> tuple[str, ...] | None:
    """`all` -> None (every frame); else a comma list of success, failure, unknown, corrected. ValueError naming
    the bad word."""
    words = [w.strip() for w in str(spec).split(",") if w.strip()]
    if words == ["all"]:
        return None
    bad = [w for w in words if w not in KINDS]
    if bad or not words:
        raise ValueError(f"{spec!r}: expected all, or a comma list of {', '.join(KINDS)}")
    return tuple(dict.fromkeys(words))


# ended_by of an episode the robot went on with: the server stopped, ticks went missing, or the server's length cap
CUT = ("shutdown", "gap", "length")


def _base_session(session: str) -> str:
    """The robot's session of an episode recorded after lost ticks: SESSION~N, SESSION~N@ROBOT, SESSION@ROBOT~N."""
    return re.sub(r"~\d+(?=@|$)", "", session)


def robot_episodes(ds: LeRobotDataset) -> list[list[int]]:
    """The recording's episodes grouped as the robot lived them, in order: an episode the server cut at its own
    stop (ended_by "shutdown"), where ticks went missing ("gap") or at its length cap ("length") is followed, under
    the same session (SESSION~N after lost ticks), by the part the robot went on with. A part that starts at the
    robot's tick 0 is not that: it is the robot's next episode (a robot that restarted after the cut), and the cut
    one ends there with its own outcome."""
    groups: list[list[int]] = []
    open_group: dict[str, list[int]] = {}  # session -> its group still going on (its last part was cut)
    for ep in sorted(ds.episodes, key=lambda e: e.index):
        session = ep.meta.get(SESSION)
        key = None if session is None else _base_session(str(session))
        group = open_group.pop(key, None) if key is not None else None
        if group is not None and ep.meta.get(FIRST_TICK) == 0:  # the robot began again: not a continuation
            group = None
        if group is None:
            group = []
            groups.append(group)
        group.append(ep.index)
        if key is not None and ep.meta.get(ENDED_BY) in CUT:
            open_group[key] = group
    return groups


def robot_outcomes(ds: LeRobotDataset) -> dict[int, str]:
    """Each episode's outcome as the robot lived it: every part of a robot's episode (robot_episodes) takes the
    outcome of its last part, where the robot finished it."""
    own = _outcomes(ds)
    return {i: own[group[-1]] for group in robot_episodes(ds) for i in group}


def frame_mask(ds: LeRobotDataset, kinds: tuple[str, ...] | None) -> np.ndarray | None:
    """Which frames of `ds` to learn from: those of episodes whose outcome (robot_outcomes: a part cut by a server
    restart, missing ticks or a length cap counts as the episode it belongs to) is in `kinds`, and with "corrected"
    the frames an operator corrected; None (all) for `kinds` None or a dataset that is not a recording."""
    if kinds is None or not is_recording(ds):
        return None
    mask = np.zeros(ds.num_frames, bool)
    outcomes = robot_outcomes(ds)
    for ep in ds.episodes:
        if outcomes[ep.index] in kinds:
            mask[ep.start:ep.stop] = True
    corrected = _column(ds, CORRECTED) if "corrected" in kinds else None
    if corrected is not None:
        mask |= corrected
    return mask


def summary(ds: LeRobotDataset) -> dict | None:
    """Episodes by outcome, corrected frames, what ended the episodes and the sessions; None if not a recording."""
    if not is_recording(ds):
        return None
    corrected = _column(ds, CORRECTED)
    per_ep = [int(corrected[e.start:e.stop].sum()) if corrected is not None else 0 for e in ds.episodes]
    out = {"outcomes": {o: 0 for o in OUTCOMES}, "corrected_frames": sum(per_ep),
           "episodes_with_corrections": sum(1 for n in per_ep if n),
           "sessions": len({str(e.meta.get(SESSION)) for e in ds.episodes if e.meta.get(SESSION) is not None})}
    own = _outcomes(ds)
    groups = robot_episodes(ds)  # counted as the robot lived them: a cut episode's parts are one
    out["outcomes"].update(Counter(own[g[-1]] for g in groups))
    if len(groups) != ds.num_episodes:
        out["parts"] = ds.num_episodes  # dataset episodes, more than the robot's where the server cut some
    ended = Counter(str(e.meta[ENDED_BY]) for e in ds.episodes if e.meta.get(ENDED_BY) is not None)
    if ended:
        out["ended_by"] = dict(ended.most_common())
    by_index = {e.index: e for e in ds.episodes}
    models: dict[str, Counter] = {}
    for g in groups:  # the model serving where the robot finished the episode
        model = by_index[g[-1]].meta.get(MODEL)
        models.setdefault("unknown" if model is None else str(model), Counter())[own[g[-1]]] += 1
    # the served model that produced them, how each did in the field (an older rfm's episodes name none: unknown)
    if set(models) != {"unknown"}:
        out["models"] = {m: {o: c[o] for o in OUTCOMES if c[o]} for m, c in models.items()}
    mid = sum(1 for g in groups if (by_index[g[0]].meta.get(FIRST_TICK) or 0) > 0)
    if mid:
        out["start_mid_episode"] = mid  # the robot's first ticks were not recorded anywhere (a killed server)
    timing = tick_timing(ds)
    if timing is not None:
        out["timing"] = timing
    return out


def late_ticks(ds: LeRobotDataset, episode: int) -> np.ndarray | None:
    """Frame offsets in `episode` whose tick came more than LATE_TICK_PERIODS control periods after the one before;
    None where the recording holds no tick times for it (not a recording, or its robot did not say)."""
    times = _tick_times(ds)
    t = None if times is None else _episode_times(times, ds.episode(episode))
    return None if t is None else np.flatnonzero(np.diff(t) > LATE_TICK_PERIODS / float(ds.fps)) + 1


def tick_timing(ds: LeRobotDataset, episodes: set[int] | None = None) -> dict | None:
    """When the recorded ticks really came (the tick_time column): how many came late, more than LATE_TICK_PERIODS
    control periods after the one before (a stalled control loop, a robot slower than the model's rate), in which
    episodes, the longest interval and the median rate (of `episodes`, else all); None for a recording without
    the column."""
    times = _tick_times(ds)
    if times is None:
        return None
    period = 1.0 / float(ds.fps)
    late: dict[int, int] = {}
    intervals, untimed, early = [], 0, 0
    for ep in ds.episodes:
        if episodes is not None and ep.index not in episodes:
            continue
        t = _episode_times(times, ep)
        if t is None:
            untimed += 1
            continue
        gaps = np.diff(t)
        intervals.append(gaps)
        n = int((gaps > LATE_TICK_PERIODS * period).sum())
        if n:
            late[ep.index] = n
        early += int((gaps < EARLY_TICK_PERIODS * period).sum())  # a loop catching up after a stall
    gaps = np.concatenate(intervals) if intervals else np.zeros(0)
    return {"timed_episodes": len(intervals), "untimed_episodes": untimed, "late_ticks": sum(late.values()),
            "late_after_periods": LATE_TICK_PERIODS, "episodes_with_late_ticks": sorted(late),
            "early_ticks": early, "early_within_periods": EARLY_TICK_PERIODS,
            "longest_interval_ms": round(1000 * float(gaps.max()), 1) if gaps.size else None,
            "median_rate_hz": round(1.0 / float(np.median(gaps)), 2) if gaps.size and np.median(gaps) > 0 else None,
            "fps": ds.fps}


def _tick_times(ds: LeRobotDataset) -> np.ndarray | None:
    """The tick_time column, one float64 a frame; None for a dataset without it."""
    values = ds.extras.get(TICK_TIME)
    return None if values is None else np.asarray(values, np.float64).reshape(ds.num_frames, -1)[:, 0]


def _episode_times(times: np.ndarray, ep: Episode) -> np.ndarray | None:
    """One episode's tick times; None where its robot did not say when it ticked (-1)."""
    t = times[ep.start:ep.stop]
    return t if len(t) and t[0] >= 0 else None


def _column(ds: LeRobotDataset, key: str) -> np.ndarray | None:
    values = ds.extras.get(key)
    return None if values is None else np.asarray(values).reshape(ds.num_frames, -1)[:, 0].astype(bool)
