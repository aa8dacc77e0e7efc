"""Closed-loop rollouts of a Runner in Meta-World: one episode, one task, success or not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rfm.eval.ensemble import ChunkQueue, TemporalEnsembler
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


def rollout(runner: Runner, env, seed: int, action_steps: int | None = None, ensemble: bool = False,
            ensemble_m: float = 0.01, record: bool = False,
            on_step: Callable[[object, int], None] | None = None) -> RolloutResult:
    """Run one episode: predict a chunk, execute `action_steps` of it (or ensemble every step), until done.

    on_step(env, step) is called after every environment step (diagnostics read the simulator there).
    """
    obs = env.reset(seed)
    ens, queue = TemporalEnsembler(ensemble_m), ChunkQueue(action_steps)
    frames = [obs["images"][env.cameras[0]]] if record else []
    success, steps, inferences = False, 0, 0
    while True:
        if ensemble:
            action = ens.update(runner.predict(obs))
            inferences += 1
        else:
            if queue.needs_chunk():
                queue.push(runner.predict(obs))
                inferences += 1
            action = queue.pop()
        obs, _, done, info = env.step(np.clip(action, -1.0, 1.0))
        steps += 1
        if on_step is not None:
            on_step(env, steps)
        if record:
            frames.append(obs["images"][env.cameras[0]])
        if info["success"]:
            success = True
        if done:
            break
    return RolloutResult(env.task, seed, env.instruction, success, steps, inferences, frames)
