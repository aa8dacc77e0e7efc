"""Robot interfaces of supported robots, and an example observation for each: start here to adapt a new robot.

`make_<robot>_example()` returns (RobotInterface, observation) with the right cameras, image sizes and state/action
layouts, so a new integration can be checked against a policy before any real data exists.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rfm.config import RobotInterface


def _obs(itf: RobotInterface, instruction: str, seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    h, w = itf.image_size
    return {"images": {c: g.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in itf.cameras},
            "state": g.standard_normal(itf.state_dim).astype(np.float32), "instruction": instruction}


def make_sawyer_example() -> tuple[RobotInterface, dict]:
    """Meta-World Sawyer (the simulator rfm evaluates in): 2 cameras, hand xyz + gripper, delta-xyz + grip at 80 Hz."""
    from rfm.sim.metaworld import ACTION_NAMES, CONTROL_HZ, STATE_NAMES

    itf = RobotInterface(cameras=["corner", "topview"], image_size=(128, 128), state_names=STATE_NAMES,
                         action_names=ACTION_NAMES, chunk_size=16, control_hz=CONTROL_HZ, robot_type="sawyer")
    return itf, _obs(itf, "open the drawer")


def make_aloha_example() -> tuple[RobotInterface, dict]:
    """ALOHA bimanual: 4 cameras, 14 joint positions (2 x (6 joints + gripper)), absolute joint targets at 50 Hz."""
    joints = [f"{side}_{j}" for side in ("left", "right")
              for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]
    itf = RobotInterface(cameras=["cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"], image_size=(120, 160),
                         state_names=joints, action_names=joints, chunk_size=50, control_hz=50.0, robot_type="aloha")
    return itf, _obs(itf, "transfer the cube to the other arm")


def make_so100_example() -> tuple[RobotInterface, dict]:
    """SO-100 / SO-101 arm (LeRobot's low-cost arm): front + wrist camera, 6 joints, absolute targets at 30 Hz."""
    joints = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    itf = RobotInterface(cameras=["front", "wrist"], image_size=(96, 128), state_names=joints, action_names=joints,
                         chunk_size=30, control_hz=30.0, robot_type="so100")
    return itf, _obs(itf, "pick up the block and put it in the bin")


def make_ur5_example() -> tuple[RobotInterface, dict]:
    """UR5e with a parallel gripper: scene + wrist camera, TCP pose (xyz + axis-angle) + gripper, delta TCP at 10 Hz."""
    state = ["x", "y", "z", "rx", "ry", "rz", "gripper"]
    itf = RobotInterface(cameras=["scene", "wrist"], image_size=(128, 128), state_names=state,
                         action_names=[f"d{n}" for n in state[:-1]] + ["gripper"], chunk_size=10, control_hz=10.0,
                         robot_type="ur5e")
    return itf, _obs(itf, "place the part in the fixture")


ROBOTS: dict[str, Callable[[], tuple[RobotInterface, dict]]] = {
    "sawyer": make_sawyer_example, "aloha": make_aloha_example, "so100": make_so100_example,
    "ur5e": make_ur5_example,
}
