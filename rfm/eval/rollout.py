"""Closed-loop rollouts of a Runner in Meta-World: one episode, one task, success or not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rfm.client.executor import ChunkExecutor
from rfm.runtime.base import Runner


@dataclass
class RolloutResult:
    task: str
    seed: int
    instruction: str
    success: bool
    steps: int
    inferences: int
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) of the first camera, if recorded
    jerk_switch: list[float] = field(default_factory=list)  # mean |a_t - a_t-1| where a new chunk took over
    jerk_within: list[float] = field(default_factory=list)  # the same between actions of one chunk


def rollout(runner: Runner, env, seed: int, action_steps: int | None = None, ensemble: bool = False,
            ensemble_m: float = 0.01, record: bool = False,
            on_step: Callable[[object, int], None] | None = None, delay: int = 0,
            continuation: bool = False) -> RolloutResult:
    """Run one episode through the robot SDK's ChunkExecutor: a chunk every `action_steps` ticks (default: whole
    chunks; with `ensemble`, every tick, temporally ensembled), each usable `delay` ticks after the observation it
    was computed from (the robot executing the previous chunk meanwhile), until done. With `continuation` each
    request carries the actions committed for those `delay` ticks (delay-aware continuation).

    on_step(env, step) is called after every environment step (diagnostics read the simulator there).
    """
    obs = env.reset(seed)
    steps_per_request = 1 if ensemble else (action_steps or runner.interface.chunk_size)
    executor = ChunkExecutor(runner.predict, action_steps=steps_per_request, delay_ticks=delay,
                             ensemble_decay=ensemble_m if ensemble else None, continuation=continuation)
    frames = [obs["images"][env.cameras[0]]] if record else []
    success, steps = False, 0
    prev, source, switch, within = None, None, [], []
    try:
        while True:
            action = np.clip(executor.step(obs), -1.0, 1.0)
            if prev is not None:  # action jerk, at chunk switches and inside chunks
                (switch if executor.source != source else within).append(float(np.abs(action - prev).mean()))
            prev, source = action, executor.source
            obs, _, done, info = env.step(action)
            steps += 1
            if on_step is not None:
                on_step(env, steps)
            if record:
                frames.append(obs["images"][env.cameras[0]])
            if info["success"]:
                success = True
            if done:
                break
    finally:
        executor.close()
    return RolloutResult(env.task, seed, env.instruction, success, steps, executor.requests, frames, switch, within)
