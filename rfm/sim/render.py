"""Headless multi-camera rendering of a MuJoCo scene, tuned for throughput (no shadows, reflections or MSAA)."""

from __future__ import annotations

import os

if "MUJOCO_GL" not in os.environ:  # headless default; respect the user's choice
    _gpu = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/dri/renderD128")
    os.environ["MUJOCO_GL"] = "egl" if _gpu else "osmesa"  # EGL on GPU machines, software OSMesa elsewhere
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco
import numpy as np

# Meta-World's corner cameras are mounted upside down (their image "up" axis points below the horizon in
# world coordinates): rotate their images by 180 degrees, a camera roll, so the image is upright and not mirrored.
ROTATE_180 = frozenset({"corner", "corner2", "corner3", "corner4"})
CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")


class CameraRenderer:
    """Render named cameras of (model, data) to (H, W, 3) uint8 arrays, upright."""

    def __init__(self, model: mujoco.MjModel, size: int, cameras: list[str]) -> None:
        for cam in cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ValueError(f"unknown camera {cam!r}: expected one of {list(CAMERAS)}")
        model.vis.quality.offsamples = 0  # no anti-aliasing
        self.cameras = list(cameras)
        self.renderer = mujoco.Renderer(model, size, size)
        self._opt = mujoco.MjvOption()

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        out = {}
        for cam in self.cameras:
            self.renderer.update_scene(data, camera=cam, scene_option=self._opt)
            flags = self.renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
            img = self.renderer.render()
            out[cam] = np.ascontiguousarray(img[::-1, ::-1] if cam in ROTATE_180 else img)
        return out

    def close(self) -> None:
        self.renderer.close()
