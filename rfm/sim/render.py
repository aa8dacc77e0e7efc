"""Headless multi-camera rendering of a MuJoCo scene, tuned for throughput (no shadows, reflections or MSAA)."""

from __future__ import annotations

import os
import sys
import threading

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

# One GL call sequence at a time per process: a renderer created or freed while another thread renders crashed the
# process (segmentation fault, with OSMesa and with EGL; measured with four fleet robot threads switching tasks).
# Rendering is serialised; simulation, HTTP and the policy still overlap across threads.
_GL_LOCK = threading.RLock()


class CameraRenderer:
    """Render named cameras of (model, data) to (H, W, 3) uint8 arrays, upright."""

    def __init__(self, model: mujoco.MjModel, size: int, cameras: list[str]) -> None:
        for cam in cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ValueError(f"unknown camera {cam!r}: expected one of {list(CAMERAS)}")
        model.vis.quality.offsamples = 0  # no anti-aliasing
        self.cameras = list(cameras)
        with _GL_LOCK:
            self.renderer = mujoco.Renderer(model, size, size)
        self._opt = mujoco.MjvOption()

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        out = {}
        with _GL_LOCK:
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
        """Free the GL context and MuJoCo's GPU objects, in this renderer's own context.

        mujoco.Renderer frees its MjrContext in whichever GL context is current; left to the garbage collector while
        another renderer's context is current, that deletes the other renderer's textures and buffers (same ids), and
        its frames come out as garbage (measured: a MetaWorldEnv replaced without close() corrupted the next one's
        images). Making ours current first keeps the free to our own objects.
        """
        with _GL_LOCK:
            gl = getattr(self.renderer, "_gl_context", None)
            if getattr(gl, "_context", None) and getattr(self.renderer, "_mjr_context", None) is not None:
                gl.make_current()
            self.renderer.close()

    def __del__(self) -> None:
        # at interpreter exit the GL modules may already be torn down, and every context goes with the process
        if hasattr(self, "renderer") and not sys.is_finalizing():
            self.close()


def camera_projection(model: mujoco.MjModel, data: mujoco.MjData, camera: str) -> np.ndarray:
    """(3, 4) matrix P taking world points (x, y, z, 1) to (u w, v w, w) in the upright rendered image.

    u, v are normalised image coordinates in [-1, 1] (u right, v down, pixel edges at +-1, as grid_sample with
    align_corners=False), so one matrix serves every image size. Lets training tell where a simulator position
    appears in each camera (keypoint targets) without rendering anything.
    """
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam < 0:
        raise ValueError(f"unknown camera {camera!r}: expected one of {list(CAMERAS)}")
    pos, rot = data.cam_xpos[cam], data.cam_xmat[cam].reshape(3, 3)  # rot's columns: camera x (right), y (up), z (back)
    focal = 1.0 / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2.0)
    # camera frame: x right, y up, looking down -z -> image u = f x / -z, v = -f y / -z (rows grow downwards)
    k = np.array([[focal, 0.0, 0.0], [0.0, -focal, 0.0], [0.0, 0.0, -1.0]])
    if camera in ROTATE_180:
        k[:2] *= -1.0  # the image was rotated by 180 degrees: both axes flip
    world_to_cam = np.concatenate([rot.T, -rot.T @ pos[:, None]], axis=1)  # (3, 4)
    return k @ world_to_cam
