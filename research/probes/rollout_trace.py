"""Where does a policy's hand (or object) end up? Closed-loop rollouts on unseen seeds, traced against the goal.

A success rate says how often a task fails, not how. For each seed this runs the same rollout as `rfm eval`
(whole chunks, or K actions per inference with `--action-steps K`) and records the offset of the tracked point
from the goal every `--every` steps, in cm (x/y/z):
`tcp` is Meta-World's success point for reach (the gripper's centre), `obj1` the puck or object for push and
pick-place. A policy that stops at a steady offset believes it has arrived; one that wanders has no target.
`--gripper` also records, at the same steps, the policy's gripper command (the executed chunk step), the gripper's
opening (the state's 4th value), the hand's distance from object 1 in cm, and the scripted expert's gripper command
there (Meta-World: +1 closes): a carried object that falls back to the table while the expert still says close is
a grasp the policy let go of.
`--points` also records, at every inference, where the model's own triangulated points put the goal (the world point
its point token reads; checkpoints with `vision_points`) minus where it is, in cm: a goal estimate that drifts once
the arm moves in front of a camera shows up there.

    .venv/bin/python research/probes/rollout_trace.py --checkpoint checkpoints/default --task reach-v3 --seeds 10
Prints a table and writes research/probes/results/rollout_trace.json (one entry per checkpoint and task, appended).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scene_probe import append_result

from rfm.eval.rollout import rollout
from rfm.runtime import load_runner
from rfm.sim.metaworld import EVAL_SEED_BASE, MetaWorldEnv

RESULTS = Path(__file__).parent / "results" / "rollout_trace.json"


def tracked(env: MetaWorldEnv, point: str) -> np.ndarray:
    """The tracked point's world position: the gripper's centre (tcp) or object 1."""
    return np.asarray(env.env.tcp_center if point == "tcp" else env.env_state()[0:3], dtype=np.float64)


def offset_cm(env: MetaWorldEnv, point: str) -> list[float]:
    """Tracked point minus the goal, in cm."""
    return (100 * (tracked(env, point) - env.env_state()[6:9])).round(1).tolist()


class ChunkTap:
    """Wraps a runner's predict to keep the last chunk, so an observer knows the command just executed; with
    `goal_of` (observation -> the model's goal point, metres) also the model's goal at every inference."""

    def __init__(self, runner, goal_of=None, action_steps: int | None = None):
        self.runner, self.chunk, self.goal_of, self.goals = runner, None, goal_of, []
        self.action_steps = action_steps  # executed per inference (None: whole chunks), to know the row executed

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def predict(self, obs):
        self.chunk = self.runner.predict(obs)
        if self.goal_of is not None:
            self.goals.append(self.goal_of(obs))
        return self.chunk


def model_goal(policy) -> Callable[[dict], np.ndarray]:
    """observation -> the world goal point (metres) the policy's point token triangulates (keypoint_probe's reading)."""
    from keypoint_probe import POINTS, keypoints

    if policy.net.point_token is None:
        raise SystemExit("--points needs a checkpoint with triangulated points (model.vision_points > 0)")
    return lambda obs: keypoints(policy, obs)[1][POINTS["goal"]]


def grip(env: MetaWorldEnv, tap: ChunkTap, step: int) -> list[float]:
    """[policy's gripper command, gripper opening, hand-to-object-1 distance in cm, the expert's gripper command].

    Step s executed row (s - 1) % K of the last chunk, K the actions executed per inference (whole chunks: H)."""
    command = float(tap.chunk[(step - 1) % (tap.action_steps or len(tap.chunk)), 3])
    hand_obj = 100 * np.linalg.norm(np.asarray(env.env.tcp_center) - env.env_state()[0:3])
    return [round(command, 2), round(float(env._raw[3]), 2), round(float(hand_obj), 1),
            round(float(env.expert_action()[3]), 2)]


def recorder(offsets: dict[int, list[float]], grips: dict[int, list[float]] | None, every: int, point: str,
             tap: ChunkTap | None = None):
    """An on_step observer storing the offset (and, given `grips`, the gripper's state) every `every` steps."""
    def record(env: MetaWorldEnv, step: int) -> None:
        if step % every == 0:
            offsets[step] = offset_cm(env, point)
            if grips is not None:
                grips[step] = grip(env, tap, step)
    return record


def trace(checkpoint: str, task: str, seeds: int, first_seed: int, every: int, point: str,
          gripper: bool = False, points: bool = False, action_steps: int | None = None) -> dict:
    base = load_runner(checkpoint)
    runner = ChunkTap(base, model_goal(base.policy) if points else None, action_steps)
    env = MetaWorldEnv(task, runner.interface.cameras, runner.interface.image_size[0])
    rows = []
    try:
        for i in range(seeds):
            offsets: dict[int, list[float]] = {}
            runner.goals = []
            grips: dict[int, list[float]] | None = {} if gripper else None
            res = rollout(runner, env, first_seed + i, action_steps=action_steps,
                          on_step=recorder(offsets, grips, every, point, runner))
            row = {"seed": first_seed + i, "success": res.success, "steps": res.steps,
                   "goal": env.env_state()[6:9].round(3).tolist(), "final_offset_cm": offset_cm(env, point),
                   "offsets_cm": offsets}
            if grips is not None:
                row["grip_command_opening_hand_obj_cm_expert"] = grips
            if points:  # the goal is fixed during an episode: compare every estimate with where it is
                row["model_goal_error_cm"] = (100 * (np.array(runner.goals) - row["goal"])).round(1).tolist()
            rows.append(row)
    finally:
        env.close()
    return {"checkpoint": checkpoint, "task": task, "point": point, "every": every, "action_steps": action_steps,
            "rollouts": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=EVAL_SEED_BASE)
    ap.add_argument("--every", type=int, default=50, help="record the offset every N steps")
    ap.add_argument("--point", default="tcp", choices=["tcp", "obj1"])
    ap.add_argument("--gripper", action="store_true",
                    help="also record the gripper's opening, hand-to-object distance and the expert's grip command")
    ap.add_argument("--action-steps", type=int, default=None,
                    help="actions executed per inference, as rfm eval's (default: whole chunks)")
    ap.add_argument("--points", action="store_true",
                    help="also record the model's triangulated goal minus the true goal (cm) at every inference")
    args = ap.parse_args()
    out = trace(args.checkpoint, args.task, args.seeds, args.first_seed, args.every, args.point, args.gripper,
                args.points, args.action_steps)
    print(f"{args.checkpoint}, {args.task}: {args.point} - goal in cm (x/y/z), every {args.every} steps")
    print(f"{'seed':>8} {'ok':>3} {'steps':>5}  {'goal (m)':<22} {'final offset (cm)':<22} offsets along the way")
    for r in out["rollouts"]:
        along = "  ".join("/".join(f"{v:+.0f}" for v in o) for o in r["offsets_cm"].values())
        print(f"{r['seed']:>8} {'yes' if r['success'] else 'no':>3} {r['steps']:>5}  "
              f"{'/'.join(f'{v:.3f}' for v in r['goal']):<22} {'/'.join(f'{v:+.1f}' for v in r['final_offset_cm']):<22} "
              f"{along}")
        if "grip_command_opening_hand_obj_cm_expert" in r:
            grips = "  ".join(f"{c:+.1f}/{o:.1f}/{d:.0f}/{e:+.1f}"
                              for c, o, d, e in r["grip_command_opening_hand_obj_cm_expert"].values())
            print(f"{'':>8} grip command / opening / hand-object cm / expert's command: {grips}")
        if "model_goal_error_cm" in r:
            errs = r["model_goal_error_cm"]
            stride = max(1, len(errs) // 8)  # at most ~8 of them on the line
            goals = "  ".join("/".join(f"{v:+.0f}" for v in e) for e in errs[::stride])
            print(f"{'':>8} model's goal - goal (cm), every {stride} inference(s): {goals}")
    append_result(RESULTS, out)


if __name__ == "__main__":
    main()
