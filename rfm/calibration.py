"""Camera calibration as robot data: per named camera, world -> normalised image coordinates of the model input.

A robot declares its cameras either by the usual pinhole calibration (OpenCV convention: `intrinsics` K in pixels
of the camera's native frame, `extrinsics` [R | t] world -> camera, x right, y down, z forward) or directly by a
`projection` (3 x 4) into normalised image coordinates: u, v in [-1, 1], u right, v down, pixel edges at +-1 (as
grid_sample with align_corners=False). Normalised coordinates do not change when a frame is resized, so one matrix
serves every resolution; padding or cropping to the model's aspect moves them, and `model_projection` applies that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rfm.constants import ASPECT_MODES


def _matrix(value: Any, shape: tuple[int, int], field: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape or not np.isfinite(arr).all():
        raise ValueError(f"{field}: expected a finite {shape[0]} x {shape[1]} matrix, got shape {list(arr.shape)}")
    return arr


def pixel_to_normalised(height: int, width: int) -> np.ndarray:
    """(3, 3) map from pixel coordinates (pixel centres at integers, OpenCV) to normalised [-1, 1] coordinates."""
    return np.array([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0.0, 0.0, 1.0]])


def aspect_transform(native: tuple[int, int], size: tuple[int, int], aspect: str) -> np.ndarray:
    """(3, 3) map from the native frame's normalised coordinates to the model input's, for rfm.imaging.fit_frame."""
    (h, w), (mh, mw) = native, size
    if aspect == "resize" or (h * mw == w * mh):
        return np.eye(3)
    ratio = (w / h) / (mw / mh)  # > 1: the native frame is wider than the model's input
    if aspect == "pad":  # the whole frame, shrunk along its long side's counterpart
        sx, sy = (1.0, 1.0 / ratio) if ratio > 1 else (ratio, 1.0)
    elif aspect == "crop":  # the centre, the rest cut off
        sx, sy = (ratio, 1.0) if ratio > 1 else (1.0, 1.0 / ratio)
    else:
        raise ValueError(f"aspect={aspect!r}: expected one of {ASPECT_MODES}")
    return np.diag([sx, sy, 1.0])


def check_calibration(cal: dict, camera: str, native: tuple[int, int] | None) -> dict:
    """A validated, JSON-ready copy of one camera's calibration; errors name interface.calibration.<camera>."""
    where = f"interface.calibration.{camera}"
    if not isinstance(cal, dict):
        raise ValueError(f"{where}: expected an object with 'projection', or 'intrinsics' and 'extrinsics'")  # noqa: TRY004
    unknown = sorted(set(cal) - {"projection", "intrinsics", "extrinsics"})
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (expected projection, or intrinsics and extrinsics)")
    if "projection" in cal:
        if "intrinsics" in cal or "extrinsics" in cal:
            raise ValueError(f"{where}: give either 'projection' or 'intrinsics' + 'extrinsics', not both")
        return {"projection": _matrix(cal["projection"], (3, 4), f"{where}.projection").tolist()}
    if "intrinsics" not in cal or "extrinsics" not in cal:
        raise ValueError(f"{where}: needs both 'intrinsics' (3 x 3, pixels) and 'extrinsics' (3 x 4, world -> camera)")
    if native is None:
        raise ValueError(f"{where}: pixel intrinsics need the camera's native frame size in "
                         f"interface.native_sizes.{camera}")
    return {"intrinsics": _matrix(cal["intrinsics"], (3, 3), f"{where}.intrinsics").tolist(),
            "extrinsics": _matrix(cal["extrinsics"], (3, 4), f"{where}.extrinsics").tolist()}


def normalised_projection(cal: dict, native: tuple[int, int] | None) -> np.ndarray:
    """(3, 4) world -> normalised coordinates of the camera's native frame."""
    if "projection" in cal:
        return np.asarray(cal["projection"], dtype=np.float64)
    assert native is not None
    return pixel_to_normalised(*native) @ np.asarray(cal["intrinsics"]) @ np.asarray(cal["extrinsics"])


def model_projection(cal: dict, native: tuple[int, int] | None, size: tuple[int, int], aspect: str) -> np.ndarray:
    """(3, 4) world -> normalised coordinates of the model's input image (after resize / pad / crop)."""
    proj = normalised_projection(cal, native)
    return proj if native is None else aspect_transform(native, size, aspect) @ proj


__all__ = ["ASPECT_MODES", "aspect_transform", "check_calibration", "model_projection", "normalised_projection",
           "pixel_to_normalised"]
