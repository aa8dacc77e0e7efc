"""Success rates per task over many closed-loop episodes, with evaluation seeds disjoint from training seeds."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rfm.eval.card import weights_digest
from rfm.eval.rollout import RolloutResult, rollout
from rfm.processes import process_map
from rfm.runtime.base import Runner


def _episodes(tasks: list[str], episodes: int, seed: int, paraphrase: bool) -> list[tuple[str, int, str]]:
    from rfm.sim.metaworld import instructions_for

    work = []
    for k, task in enumerate(tasks):
        texts = instructions_for(task, paraphrase=paraphrase)
        for i in range(episodes):
            work.append((task, seed + 1000 * k + i, texts[i % len(texts)]))
    return work


def _run(runner: Runner, work: list[tuple[str, int, str]], opts: dict, video_dir: Path | None,
         progress: bool, filmed: set[tuple[str, int]] | None = None) -> list[RolloutResult]:
    """Roll out `work`; with `video_dir`, a GIF of each task's first episode (or of the episodes in `filmed`: with
    workers, each task's first episode is filmed by whichever worker holds it)."""
    from rfm.progress import progress_bar
    from rfm.sim.metaworld import MetaWorldEnv

    tqdm = progress_bar()

    itf = runner.interface
    if opts.get("snap_instructions") is not None and runner.snapper is None:
        runner.snap_instructions(opts["snap_instructions"])
    envs: dict[str, MetaWorldEnv] = {}
    results = []
    for task, seed, text in tqdm(work, desc="eval", disable=not progress, dynamic_ncols=True):
        if task not in envs:
            envs[task] = MetaWorldEnv(task, itf.cameras, itf.image_size[0], max_steps=opts["max_steps"])
        env = envs[task]
        env.instruction = text
        first = video_dir is not None and ((task, seed) in filmed if filmed is not None
                                           else not any(r.task == task for r in results))
        res = rollout(runner, env, seed, opts["action_steps"], opts["ensemble"], opts["ensemble_m"], record=first,
                      delay=opts.get("delay", 0), continuation=opts.get("continuation", False))
        if first and res.frames:
            _save_video(res.frames, Path(video_dir) / f"{task}.gif", fps=round(itf.control_hz / 2))
            res.frames = []
        results.append(res)
    for env in envs.values():
        env.close()
    return results


def _save_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames[::2], duration=1000 / max(fps, 1), loop=0)


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Daemon thread in a worker: exit when the parent is gone (killed `rfm eval`), instead of finishing its shard."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _worker(args: tuple) -> list[RolloutResult]:
    path, backend, work, opts, parent_pid, video_dir, filmed = args
    import torch

    from rfm.runtime import load_runner

    _exit_with_parent(parent_pid)
    torch.set_num_threads(1)
    return _run(load_runner(path, backend=backend, device="cpu", seed=0), work, opts, video_dir, False, filmed)


def evaluate(runner: Runner | None, tasks: list[str], episodes: int, seed: int | None = None,
             paraphrase: bool = False, ensemble: bool = False, ensemble_m: float = 0.01,
             action_steps: int | None = None, max_steps: int | None = None, video_dir: str | Path | None = None,
             workers: int = 1, checkpoint: str | None = None, backend: str = "torch",
             progress: bool = True, snap_instructions: float | None = None, delay: int = 0,
             continuation: bool = False) -> dict:
    """Closed-loop success rates. With workers > 1, each process loads its own runner from `checkpoint`.

    delay: simulated inference delay in control ticks: each chunk is usable `delay` ticks after the observation it
    was computed from, the robot executing the previous one meanwhile (rfm.client.ChunkExecutor).
    continuation: each request carries the actions committed for those ticks, and the model continues them
    (delay-aware continuation: a checkpoint with model.prefix_max > 0).

    snap_instructions: the runner maps untrained instructions to the nearest trained one at this cosine similarity
    (rfm.runtime.snap); the results then say where each instruction went (`instruction_matches`).
    """
    from rfm.sim.metaworld import EVAL_SEED_BASE, MAX_STEPS, expand_tasks

    tasks = expand_tasks(tasks)
    seed = EVAL_SEED_BASE if seed is None else seed
    if seed < EVAL_SEED_BASE:
        raise ValueError(f"seed={seed}: evaluation seeds must be >= {EVAL_SEED_BASE} (below are training seeds)")
    if delay < 0:
        raise ValueError(f"delay={delay}: expected a number of control ticks >= 0")
    if continuation and ensemble:
        raise ValueError("continuation and ensemble are two ways to switch chunks: pick one")
    opts = {"max_steps": max_steps or MAX_STEPS, "action_steps": action_steps, "ensemble": ensemble,
            "ensemble_m": ensemble_m, "snap_instructions": snap_instructions, "delay": delay,
            "continuation": continuation}
    work = _episodes(tasks, episodes, seed, paraphrase)
    # which weights these numbers belong to, taken before the rollouts, so a card can check them (rfm.eval.card)
    digest = weights_digest(checkpoint) if checkpoint is not None and backend == "torch" else None
    t0 = time.time()
    if workers > 1:
        if checkpoint is None:
            raise ValueError("workers > 1 needs checkpoint= (each process loads its own runner)")
        shards = [work[i::workers] for i in range(workers)]
        first_seed: dict[str, int] = {}
        for task, sd, _ in work:
            first_seed.setdefault(task, sd)
        filmed = set(first_seed.items())  # each task's first episode, whichever worker runs it
        jobs = [(checkpoint, backend, s, opts, os.getpid(), Path(video_dir) if video_dir else None, filmed)
                for s in shards]
        results = [r for part in process_map(_worker, jobs, workers) for r in part]  # WorkerDied if one dies
    else:
        if runner is None:
            from rfm.runtime import load_runner

            runner = load_runner(checkpoint, backend=backend)
        results = _run(runner, work, opts, Path(video_dir) if video_dir else None, progress)
    matches = None
    if snap_instructions is not None:  # where each instruction went, from this process's runner
        if runner is None:
            from rfm.runtime import load_runner

            runner = load_runner(checkpoint, backend=backend, device="cpu")
        snapper = runner.snapper or runner.snap_instructions(snap_instructions)
        matches = {t: asdict(snapper.match(t)) for t in sorted({text for _, _, text in work})}
    per_task = {}
    for task in tasks:
        rs = sorted((r for r in results if r.task == task), key=lambda r: r.seed)
        per_task[task] = {"success_rate": float(np.mean([r.success for r in rs])), "episodes": len(rs),
                          "successes": int(sum(r.success for r in rs)),
                          "mean_steps": float(np.mean([r.steps for r in rs])),
                          "mean_inferences": float(np.mean([r.inferences for r in rs])),
                          **_jerk([j for r in rs for j in r.jerk_switch], [j for r in rs for j in r.jerk_within]),
                          "rollouts": [{"seed": r.seed, "success": bool(r.success), "steps": r.steps} for r in rs]}
    return {"tasks": per_task, "mean_success_rate": float(np.mean([v["success_rate"] for v in per_task.values()])),
            **_jerk([j for r in results for j in r.jerk_switch], [j for r in results for j in r.jerk_within]),
            "checkpoint": checkpoint, "weights_sha256": digest, "backend": getattr(runner, "backend", backend),
            "paraphrase": paraphrase, "ensemble": ensemble, "action_steps": action_steps, "delay": delay,
            "continuation": continuation,
            "max_steps": opts["max_steps"], "snap_instructions": snap_instructions, "instruction_matches": matches,
            "seeds": sorted({s for _, s, _ in work}), "wall_time_s": round(time.time() - t0, 1)}


def _jerk(switch: list[float], within: list[float]) -> dict:
    """Mean |a_t - a_t-1| (action units, mean over dims) where a new chunk took over, and inside chunks."""
    return {"jerk_switch": round(float(np.mean(switch)), 6) if switch else None,
            "jerk_within": round(float(np.mean(within)), 6) if within else None}


def format_table(results: dict) -> str:
    rows = [f"{'task':<26}{'success':>9}{'episodes':>10}{'mean steps':>12}"]
    for task, r in results["tasks"].items():
        rows.append(f"{task:<26}{r['success_rate'] * 100:>8.0f}%{r['episodes']:>10}{r['mean_steps']:>12.1f}")
    rows.append(f"{'mean':<26}{results['mean_success_rate'] * 100:>8.1f}%")
    if results.get("instruction_matches"):
        m = results["instruction_matches"]
        rows.append(f"instructions snapped to a trained one (similarity >= {results['snap_instructions']:g}): "
                    f"{sum(v['snapped'] for v in m.values())} of {len(m)}")
    return "\n".join(rows)
