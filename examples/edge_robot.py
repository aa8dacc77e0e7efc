"""A robot that runs its model itself (an `rfm export` on its CPU or NPU, no server) and records what it does.

    python examples/edge_robot.py EXPORT_OR_CHECKPOINT --record field/ [--task drawer-open-v3] [--episodes 3]

The loop of docs/EDGE.md ("Running an export"): one action per control tick from `ChunkExecutor`, every chunk
clipped to the model's action limits, every tick recorded by `LocalRecorder` into a LeRobot v3.0 dataset on the
robot's disk; each episode ends with the outcome the robot reports. Then `rfm data info field/` says how the
episodes went and `rfm train --dataset DEMOS,field/ --recorded-episodes success,corrected ...` learns from them.

A simulated Meta-World arm stands in for the robot: replace `SimRobot` with your robot's driver (observe, execute,
done, succeeded). On a device, `pip install "rfm-*.whl[edge,record]"` runs an export without torch (the simulator
needs `rfm[sim]`).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


class SimRobot:
    """Meta-World's Sawyer behind a robot driver's four calls."""

    def __init__(self, task: str, cameras: list[str], size: int, max_steps: int) -> None:
        from rfm.sim.instructions import instructions_for
        from rfm.sim.metaworld import MetaWorldEnv

        self.env = MetaWorldEnv(task, cameras, size, max_steps=max_steps)
        self.instruction = instructions_for(task)[0]
        self.success = self.finished = False

    def start(self, seed: int) -> dict:
        self.success = self.finished = False
        return self._with_instruction(self.env.reset(seed))

    def observe(self) -> dict:
        return self._obs

    def execute(self, action: np.ndarray) -> dict:
        obs, _, done, info = self.env.step(np.clip(action, -1.0, 1.0))  # the arm's own limits
        self.success = self.success or bool(info["success"])
        self.finished = done or self.success
        return self._with_instruction(obs)

    def done(self) -> bool:
        return self.finished

    def succeeded(self) -> bool:
        return self.success

    def _with_instruction(self, obs: dict) -> dict:
        self._obs = {**obs, "instruction": self.instruction}
        return self._obs

    def close(self) -> None:
        self.env.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an `rfm export` directory (runs on ONNX Runtime) or a checkpoint")
    p.add_argument("--record", required=True, metavar="DIR", help="the recording (created, or appended to)")
    p.add_argument("--task", default="drawer-open-v3", help="the Meta-World task the stand-in robot does")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=500, help="ticks before an episode is given up")
    p.add_argument("--seed", type=int, default=1_000_000, help="the first episode's seed (unseen by training)")
    args = p.parse_args()

    from rfm.client import ChunkExecutor
    from rfm.runtime import ActionLimits, LocalRecorder, load_runner

    runner = load_runner(args.model)
    limits = ActionLimits.for_model(args.model)  # the training stats' range, widened 10 %: as a server clips
    itf = runner.interface
    robot = SimRobot(args.task, list(itf.cameras), int(itf.image_size[0]), args.max_steps)
    try:
        with LocalRecorder(args.record, runner, session_id="edge-robot", real_time=False) as rec, \
                ChunkExecutor(runner, limits=limits, recorder=rec) as executor:
            for episode in range(args.episodes):
                robot.start(args.seed + episode)
                obs, t0, ticks = robot.observe(), time.perf_counter(), 0
                while not robot.done():
                    obs = robot.execute(executor.step(obs))  # one action per control tick
                    ticks += 1
                executor.end_episode(success=robot.succeeded())
                print(f"episode {episode}: {'success' if robot.succeeded() else 'failure'} after {ticks} ticks "
                      f"({ticks / (time.perf_counter() - t0):.0f} ticks/s)", flush=True)
            if rec.lost:
                print(f"{rec.lost} ticks not recorded: {rec.last_error}", file=sys.stderr)
    finally:
        robot.close()
    print(f"recorded into {args.record}: rfm data info {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
