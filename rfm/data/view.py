"""Human views of a dataset: a summary dict (`rfm data info`) and a PNG contact sheet (`rfm data view`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfm.data import recording
from rfm.data.reader import LeRobotDataset


def summary(ds: LeRobotDataset) -> dict:
    storage = {}
    for cam in ds.cameras:
        ft = ds.features[ds.camera_key(cam)]
        codec = (ft.get("info") or {}).get("video.codec")
        native = f" (the robot's camera: {'x'.join(map(str, ft['native_size']))})" if ft.get("native_size") else ""
        storage[cam] = f"{ft['dtype']}{f' ({codec})' if codec else ''} {'x'.join(map(str, ds.image_shape(cam)))}{native}"
    lengths = [e.length for e in ds.episodes]
    recorded = recording.summary(ds)
    return {
        "path": str(ds.root), "codebase_version": ds.version, "robot_type": ds.robot_type, "fps": ds.fps,
        "episodes": ds.num_episodes, "frames": ds.num_frames,
        "episode_length": {"min": min(lengths), "mean": round(float(np.mean(lengths)), 1), "max": max(lengths)},
        "duration_s": round(ds.num_frames / ds.fps, 1), "tasks": ds.tasks, "cameras": storage,
        "state": ds.state_names, "action": ds.action_names, "unchanging": unchanging(ds),
        "features": {k: f"{ft['dtype']} {list(ft['shape'])}" for k, ft in ds.features.items()},
        "size_on_disk_mb": round(ds.size_bytes() / 2**20, 2),
    } | ({"recording": recorded} if recorded is not None else {}) | (
        {"non_finite": ds.non_finite} if ds.non_finite else {})


def unchanging(ds: LeRobotDataset) -> dict[str, list[str]]:
    """State and action values that hold one value in every frame: a stuck sensor, or a joint the demonstrations
    never moved (a gripper left unmapped). A policy cannot learn to move them, and the served action limits, taken
    from the data's range, hold them there. And cameras whose frames are one flat colour for a whole episode."""
    out = {}
    for key, values, names in (("state", ds.states, ds.state_names), ("action", ds.actions, ds.action_names)):
        if len(values) and values.shape[1]:
            still = np.flatnonzero(values.min(axis=0) == values.max(axis=0))
            out[key] = [names[i] if i < len(names) else str(i) for i in still]
        else:
            out[key] = []
    out["cameras"] = [f"{cam} (episodes {listed_episodes(eps)} of {ds.num_episodes})" for cam, eps in blank_cameras(ds).items()]
    return out


def blank_cameras(ds: LeRobotDataset, cameras: list[str] | None = None) -> dict[str, list[int]]:
    """{camera: episodes} where the camera's frames are one flat colour (their min equals their max in every
    channel, by the episode's stats in meta/episodes): a camera unplugged or covered while recording, black or
    white throughout. Episodes without image stats are not judged."""
    out: dict[str, list[int]] = {}
    for cam in cameras or ds.cameras:
        key = ds.camera_key(cam)
        eps = [e.index for e in ds.episodes if key in e.stats and "min" in e.stats[key] and "max" in e.stats[key]
               and np.array_equal(np.asarray(e.stats[key]["min"]), np.asarray(e.stats[key]["max"]))]
        if eps:
            out[cam] = eps
    return out


def listed_episodes(eps: list[int]) -> str:
    """Episode indices for a message: the first ten, and how many there are past them."""
    return ", ".join(map(str, eps[:10])) + (f" ... ({len(eps)})" if len(eps) > 10 else "")


def contact_sheet(ds: LeRobotDataset, episode: int, out: str | Path, n_frames: int = 8) -> Path:
    """PNG: per camera a row of n_frames evenly spaced frames, then state and action trajectories (with a
    recording's late ticks marked in red)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start, stop = ds.episode_range(episode)
    t = stop - start
    picks = np.unique(np.linspace(0, t - 1, min(n_frames, t)).round().astype(int))
    cams = ds.cameras
    rows = len(cams) + 2
    fig = Figure(figsize=(1.6 * len(picks) + 0.6, 1.7 * len(cams) + 5.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, len(picks), height_ratios=[1.0] * len(cams) + [1.4, 1.4])
    for r, cam in enumerate(cams):
        frames = ds.episode_frames(episode, cam)
        for c, i in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(frames[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={i / ds.fps:.2f}s", fontsize=8)
            if c == 0:
                ax.set_ylabel(cam, fontsize=9)
    time = np.arange(t) / ds.fps
    late = recording.late_ticks(ds, episode)  # a recording's ticks that came late: marked on the trajectories
    for r, (name, values, labels) in enumerate((("state", ds.states[start:stop], ds.state_names),
                                                 ("action", ds.actions[start:stop], ds.action_names))):
        ax = fig.add_subplot(grid[len(cams) + r, :])
        for d in range(values.shape[1]):
            ax.plot(time, values[:, d], label=labels[d] if d < len(labels) else str(d), linewidth=1.2)
        for i in (late if late is not None else [])[:200]:
            ax.axvline(time[i], color="red", alpha=0.35, linewidth=0.8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if values.shape[1] and values.shape[1] <= 12:
            ax.legend(fontsize=7, ncol=min(6, values.shape[1]), loc="upper right")
    fig.axes[-1].set_xlabel("time (s)")
    tasks = list(dict.fromkeys(ds.instruction(start + i) for i in range(t)))  # an episode may change task
    shown = " → ".join(repr(x) for x in tasks[:3]) + (f" (+{len(tasks) - 3} more)" if len(tasks) > 3 else "")
    timing = f", {len(late)} late ticks in red" if late is not None and len(late) else ""
    fig.suptitle(f"{ds.root.name}: episode {episode} ({t} frames{timing}) — {shown}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
