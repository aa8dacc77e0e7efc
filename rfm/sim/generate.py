"""Write simulated demonstrations (rfm.sim.metaworld.generate_episodes) into a LeRobot v3.0 dataset."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from rfm.constants import OBS_ENV_STATE, STEPS_AFTER_SUCCESS
from rfm.data.writer import LeRobotDatasetWriter


def write_metaworld(out: str | Path, tasks: list[str], episodes: int, cameras: list[str], size: int, seed: int = 0,
                    workers: int = 2, use_videos: bool = True, vcodec: str | None = None, overwrite: bool = False,
                    progress: bool = True, sim: ModuleType | Any = None, start_jitter: int = 0,
                    steps_after_success: int = STEPS_AFTER_SUCCESS, action_noise: float = 0.0,
                    noise_correlation: float = 0.9, env_state: bool = True) -> dict:
    """Generate `episodes` scripted-expert episodes per task (the simulator may already retry failed seeds) and
    write the successful ones, atomically.

    Task column = the language instruction; the env task name and seed are episode metadata columns
    (`env_task`, `seed`); the simulator's object and goal positions are the `observation.environment_state` column
    (a privileged training target, never a policy input); each camera's calibration and the hand's place in the
    state are recorded as robot geometry (features.<camera>.calibration, features.observation.state.ee_position).
    `sim` defaults to rfm.sim.metaworld (tests inject a fake with the same names). steps_after_success: expert
    steps kept past the success threshold; action_noise, noise_correlation: noise on the executed hand motion, the
    expert's own action recorded (rfm.sim.metaworld.generate_episode). Both are recorded per episode.
    env_state=False leaves the environment-state column out: only what a real robot's dataset has (frames, state,
    actions, instruction, camera calibration), e.g. for measuring adaptation from field-like data (rfm adapt).
    """
    if sim is None:
        from rfm.sim import metaworld as sim
    fps = round(float(sim.CONTROL_HZ))
    env_names = list(getattr(sim, "ENV_STATE_NAMES", [])) if env_state else []
    extra_features = None
    projections = sim.camera_projections(tasks, cameras) if hasattr(sim, "camera_projections") else None
    if env_names:
        extra_features = {OBS_ENV_STATE: {"dtype": "float32", "shape": [len(env_names)], "names": env_names}}
        if projections:  # also here, where rfm versions before robot geometry in the interface read them
            extra_features[OBS_ENV_STATE]["info"] = {"camera_projection": projections}
    # the simulated robot's geometry, recorded as robot data: each camera's calibration, the hand in the state
    writer = LeRobotDatasetWriter(out, fps=fps, robot_type="sawyer", cameras={c: (size, size) for c in cameras},
                                  state_names=list(sim.STATE_NAMES), action_names=list(sim.ACTION_NAMES),
                                  use_videos=use_videos, vcodec=vcodec, overwrite=overwrite,
                                  extra_features=extra_features,
                                  calibration={c: {"projection": p} for c, p in (projections or {}).items()},
                                  ee_position=getattr(sim, "EE_POSITION", None))
    tried: dict[str, int] = {}
    kept: dict[str, int] = {}
    try:
        for ep in sim.generate_episodes(tasks=tasks, episodes_per_task=episodes, cameras=cameras, size=size,
                                        seed=seed, workers=workers, progress=progress, start_jitter=start_jitter,
                                        steps_after_success=steps_after_success, action_noise=action_noise,
                                        noise_correlation=noise_correlation):
            tried[ep.task] = tried.get(ep.task, 0) + 1
            if not ep.success:
                continue
            for i in range(len(ep.action)):
                writer.add_frame(images={c: ep.frames[c][i] for c in cameras}, state=ep.state[i],
                                 action=ep.action[i], task=ep.instruction)
            meta = {"env_task": ep.task, "seed": int(ep.seed), "start_jitter": int(start_jitter),
                    "steps_after_success": int(steps_after_success)}
            if action_noise > 0:
                meta.update(action_noise=float(action_noise), noise_correlation=float(noise_correlation))
            writer.save_episode(extra={OBS_ENV_STATE: ep.env_state} if env_names else None, meta=meta)
            kept[ep.task] = kept.get(ep.task, 0) + 1
        if writer.num_episodes == 0:
            raise ValueError(f"no successful episode among {sum(tried.values())} generated; nothing written to {out}")
        root = writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return {"out": str(root), "episodes": writer.num_episodes, "frames": writer.num_frames, "tried": tried,
            "kept": kept, "fps": fps}
