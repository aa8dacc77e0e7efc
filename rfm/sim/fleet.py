"""A simulated fleet: Meta-World robots that act through a running rfm server over HTTP.

Each robot thread owns an env and an HTTP client and runs the robot SDK's ChunkExecutor: a new chunk every
`action_steps` control ticks (1: receding horizon), the robot waiting for it. When the server records (`--record`),
the robot reports every tick it executed through a TickRecorder, so the recording holds one frame per control tick
with the action executed, and tells the server when its episode ends and whether it succeeded. With `dagger=True`
every tick is labelled with the scripted expert's action, so the recording holds DAgger data: states the policy
visits, actions the expert would take.

With `takeover=Takeover(error, steps)` (HG-DAgger, a human operator's habit) the expert also takes the controls for
`steps` steps whenever the policy's action strays from its own by more than `error` (max over action dims):
the recording then holds stretches of the expert's own trajectory from states the policy reached, so the chunk of
actions a frame is trained to predict is one consistent plan, not expert labels along the policy's path.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

FLEET_SEED_BASE = 200_000  # neither training (< 100_000) nor evaluation (>= 1_000_000) seeds


@dataclass(frozen=True)
class Takeover:
    """When the expert takes the controls: policy action off by more than `error` (max over dims), for `steps`."""

    error: float
    steps: int = 16

    def __post_init__(self) -> None:
        if not self.error > 0:
            raise ValueError(f"takeover error={self.error}: must be > 0 (max action difference that triggers it)")
        if self.steps < 1:
            raise ValueError(f"takeover steps={self.steps}: must be >= 1")


def _robot(url: str, robot_id: str, work: list[tuple[str, int]], dagger: bool, max_steps: int | None,
           api_key: str | None, results: list, lock: threading.Lock, takeover: Takeover | None = None,
           action_steps: int = 1, delay: int = 0, continuation: bool = False, transport: str = "http") -> None:
    from rfm.client import ChunkExecutor, RFMClient, TickRecorder
    from rfm.sim.metaworld import MetaWorldEnv

    client = RFMClient(url, transport=transport, api_key=api_key)
    itf = client.models()
    recording = bool(itf.get("server", {}).get("recording"))
    prefix_max = int(itf.get("prefix_max") or 0)
    envs: dict[str, MetaWorldEnv] = {}
    try:
        for k, (task, seed) in enumerate(work):
            if task not in envs:
                envs[task] = MetaWorldEnv(task, itf["cameras"], itf["image_size"][0], max_steps=max_steps or 500)
            env = envs[task]
            session = f"{robot_id}-ep{k}"
            recorder = TickRecorder(client, session, robot_id, real_time=False) if recording else None
            executor = ChunkExecutor(client, action_steps=action_steps, delay_ticks=delay, recorder=recorder,
                                     continuation=continuation, prefix_max=prefix_max)
            obs = env.reset(seed)
            success, steps, t0 = False, 0, time.perf_counter()
            expert_left, expert_steps, takeovers = 0, 0, 0
            try:
                while True:
                    expert = env.expert_action() if dagger else None
                    action = np.clip(executor.step({**obs, "robot_id": robot_id, "session_id": session}), -1.0, 1.0)
                    if takeover and not expert_left and np.abs(action - expert).max() > takeover.error:
                        expert_left, takeovers = takeover.steps, takeovers + 1
                    taken = bool(expert_left)  # the expert has the controls this tick
                    if taken:
                        action, expert_left, expert_steps = expert, expert_left - 1, expert_steps + 1
                    if recorder is not None:  # what the robot executed; the expert's action as the label
                        executor.executed(action)
                        if expert is not None:
                            executor.correct(expert, executed=taken)
                    obs, _, done, info = env.step(action)
                    steps += 1
                    success = success or info["success"]
                    if done:
                        break
                if recorder is not None:
                    recorder.end_episode(success)
                    if recorder.errors:
                        raise RuntimeError(f"{robot_id}: {recorder.errors} tick uploads failed: {recorder.last_error}")
            finally:
                executor.close()
                if recorder is not None:
                    recorder.close()
            with lock:
                results.append({"task": task, "seed": seed, "robot": robot_id, "success": success, "steps": steps,
                                "expert_steps": expert_steps, "takeovers": takeovers,
                                "requests": executor.requests, "seconds": time.perf_counter() - t0})
    finally:
        client.close()
        for env in envs.values():
            env.close()


def drive_fleet(url: str, tasks: list[str] | str, episodes: int, robots: int = 2, dagger: bool = False,
                seed: int = FLEET_SEED_BASE, max_steps: int | None = None, api_key: str | None = None,
                takeover: Takeover | None = None, action_steps: int = 1, delay: int = 0,
                continuation: bool = False, transport: str = "http") -> dict:
    """Run `episodes` episodes per task spread over `robots` concurrent robots; success rates per task.
    action_steps: actions each robot executes per request; delay: simulated inference delay in control ticks (a
    chunk is usable `delay` ticks after its observation, the robot executing the previous one meanwhile);
    continuation: requests carry the actions committed for those ticks (delay-aware continuation); transport:
    how robots ask for chunks (RFMClient's: "http" or "ws").

    With `takeover`, success counts episodes the expert helped; `expert_steps` says how much it drove.
    """
    from rfm.sim.metaworld import expand_tasks

    if takeover is not None and not dagger:
        raise ValueError("takeover needs dagger=True: a takeover executes the expert's action")
    tasks = expand_tasks(tasks)
    work = [(t, seed + 1000 * k + i) for k, t in enumerate(tasks) for i in range(episodes)]
    shards = [work[i::robots] for i in range(robots)]
    results: list[dict] = []
    lock = threading.Lock()
    t0 = time.time()
    with ThreadPoolExecutor(robots) as pool:
        futures = [pool.submit(_robot, url, f"robot-{i}", shard, dagger, max_steps, api_key, results, lock, takeover,
                               action_steps, delay, continuation, transport) for i, shard in enumerate(shards) if shard]
        for f in futures:
            f.result()
    per_task = {}
    for t in tasks:
        mine = [r for r in results if r["task"] == t]
        driven = sum(r["expert_steps"] for r in mine) / max(1, sum(r["steps"] for r in mine))
        per_task[t] = {"success_rate": float(np.mean([r["success"] for r in mine])), "episodes": len(mine),
                       "expert_share": round(driven, 4), "takeovers": sum(r["takeovers"] for r in mine)}
    steps = int(sum(r["steps"] for r in results))
    return {"tasks": per_task, "mean_success_rate": float(np.mean([v["success_rate"] for v in per_task.values()])),
            "episodes": len(results), "steps": steps, "requests": int(sum(r["requests"] for r in results)),
            "action_steps": action_steps, "delay": delay, "continuation": continuation, "dagger": dagger,
            "takeover": asdict(takeover) if takeover else None,
            "expert_steps": int(sum(r["expert_steps"] for r in results)), "wall_time_s": round(time.time() - t0, 1)}
