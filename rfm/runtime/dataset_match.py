"""Whether a dataset records the robot a model serves: checked before its frames are used to evaluate or calibrate
the model, where another robot's data would give numbers that look right and mean nothing."""

from __future__ import annotations

from rfm.config import RobotInterface
from rfm.data.reader import LeRobotDataset
from rfm.runtime.observation import accepted_sizes


def check_same_robot(ds: LeRobotDataset, interface: RobotInterface, use: str, rate: bool = True) -> None:
    """ValueError naming `use` (e.g. "--calib-dataset"), the dataset and what differs, unless `ds` has the
    interface's state and action names, its cameras at a size the model accepts, and (rate) its control rate."""
    where = f"{use} {ds.root}"
    for field in ("action_names", "state_names"):
        ours, theirs = list(getattr(ds, field)), list(getattr(interface, field))
        if ours != theirs:
            raise ValueError(f"{where}: {field.split('_')[0]} names {ours} differ from the model's "
                             f"interface.{field} {theirs}; use a dataset of the same robot")
    missing = [c for c in interface.cameras if c not in ds.cameras]
    if missing:
        raise ValueError(f"{where}: no camera {missing} of the model's interface.cameras {interface.cameras}; "
                         f"the dataset has {ds.cameras}")
    for cam, sizes in accepted_sizes(interface).items():
        hw = tuple(ds.image_shape(cam)[:2])
        if hw not in sizes:
            raise ValueError(f"{where}: camera {cam!r} frames are {hw[0]}x{hw[1]}; the model's robot sends "
                             f"{' or '.join(f'{h}x{w}' for h, w in sizes)} (interface.native_sizes): another "
                             f"camera, or another robot")
    if rate and float(ds.fps) != float(interface.control_hz):
        raise ValueError(f"{where}: fps {ds.fps}, the model's interface.control_hz is {interface.control_hz}; its "
                         f"chunk steps would not line up with the recorded actions")
