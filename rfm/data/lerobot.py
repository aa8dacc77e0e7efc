"""Public entry point for LeRobot datasets: `LeRobotDataset` (read v3.0 / v2.1) and `LeRobotDatasetWriter` (v3.0).

    ds = LeRobotDataset("data/mw")                 # validates at open; DatasetError names file and field
    ds.states, ds.actions, ds.stats, ds.get_frame(i), ds.episode_range(ep)

    w = LeRobotDatasetWriter("data/new", fps=80, robot_type="sawyer", cameras={"corner2": (128, 128)},
                             state_names=[...], action_names=[...])          # atomic; incremental=True for recorders
    w.add_frame(images={"corner2": img}, state=s, action=a, task="reach the goal")
    w.save_episode()
    w.finalize()
"""

from rfm.data.errors import DatasetError
from rfm.data.reader import Episode, LeRobotDataset
from rfm.data.writer import LeRobotDatasetWriter

__all__ = ["DatasetError", "Episode", "LeRobotDataset", "LeRobotDatasetWriter"]
