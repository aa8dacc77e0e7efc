"""A simulated fleet: Meta-World robots that act through a running rfm server over HTTP.

Each robot thread owns an env and an HTTP client, asks the server for a chunk every control step and executes its
first action (receding horizon), and tells the server when its episode ends and whether it succeeded. With
`dagger=True` every request carries the scripted expert's action as a correction, so a server started with
`--record` collects DAgger-labelled data: states the policy visits, actions the expert would take.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FLEET_SEED_BASE = 200_000  # neither training (< 100_000) nor evaluation (>= 1_000_000) seeds


def _robot(url: str, robot_id: str, work: list[tuple[str, int]], dagger: bool, max_steps: int | None,
           api_key: str | None, results: list, lock: threading.Lock) -> None:
    import httpx

    from rfm.client import RFMClient
    from rfm.sim.metaworld import MetaWorldEnv

    client = RFMClient(url, api_key=api_key)
    itf = client.models()
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    envs: dict[str, MetaWorldEnv] = {}
    try:
        for k, (task, seed) in enumerate(work):
            if task not in envs:
                envs[task] = MetaWorldEnv(task, itf["cameras"], itf["image_size"][0], max_steps=max_steps or 500)
            env = envs[task]
            session = f"{robot_id}-ep{k}"
            obs = env.reset(seed)
            success, steps, t0 = False, 0, time.perf_counter()
            while True:
                extra = {"robot_id": robot_id, "session_id": session}
                if dagger:
                    extra["correction"] = env.expert_action().tolist()
                action = client.act({**obs, **extra})[0]
                obs, _, done, info = env.step(np.clip(action, -1.0, 1.0))
                steps += 1
                success = success or info["success"]
                if done:
                    break
            httpx.post(f"{url}/v1/episodes/end", json={"session_id": session, "success": success}, headers=headers,
                       timeout=30).raise_for_status()
            with lock:
                results.append({"task": task, "seed": seed, "robot": robot_id, "success": success, "steps": steps,
                                "seconds": time.perf_counter() - t0})
    finally:
        client.close()
        for env in envs.values():
            env.close()


def drive_fleet(url: str, tasks: list[str] | str, episodes: int, robots: int = 2, dagger: bool = False,
                seed: int = FLEET_SEED_BASE, max_steps: int | None = None, api_key: str | None = None) -> dict:
    """Run `episodes` episodes per task spread over `robots` concurrent robots; success rates per task."""
    from rfm.sim.metaworld import expand_tasks

    tasks = expand_tasks(tasks)
    work = [(t, seed + 1000 * k + i) for k, t in enumerate(tasks) for i in range(episodes)]
    shards = [work[i::robots] for i in range(robots)]
    results: list[dict] = []
    lock = threading.Lock()
    t0 = time.time()
    with ThreadPoolExecutor(robots) as pool:
        futures = [pool.submit(_robot, url, f"robot-{i}", shard, dagger, max_steps, api_key, results, lock)
                   for i, shard in enumerate(shards) if shard]
        for f in futures:
            f.result()
    per_task = {t: {"success_rate": float(np.mean([r["success"] for r in results if r["task"] == t])),
                    "episodes": sum(r["task"] == t for r in results)} for t in tasks}
    return {"tasks": per_task, "mean_success_rate": float(np.mean([v["success_rate"] for v in per_task.values()])),
            "episodes": len(results), "steps": int(sum(r["steps"] for r in results)), "dagger": dagger,
            "wall_time_s": round(time.time() - t0, 1)}
