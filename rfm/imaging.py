"""The one way a camera frame becomes the model's input: resize (or pad / centre-crop) to the model resolution.

Training (rfm.data.windows), both runners, the server, export calibration and the robot-side SDK (rfm.client.frames)
all call `fit_frame`, so a policy sees the same pixels whichever path a frame took. Antialiased bilinear (Pillow),
uint8 in and out. It imports nothing of rfm but constants: the SDK may use it.

Aspect policy, when the camera's aspect differs from the model's: "resize" stretches the whole frame (default: every
pixel kept, normalised image coordinates unchanged), "pad" keeps the aspect and pads with black, "crop" keeps the
centre. rfm.calibration.aspect_transform says how each moves normalised image coordinates.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from rfm.constants import ASPECT_MODES


def fit_frame(frame: np.ndarray, size: tuple[int, int], aspect: str = "resize") -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 at the model's size = (h, w); a frame already that size is returned as is."""
    h, w = int(size[0]), int(size[1])
    if frame.shape[:2] == (h, w):
        return frame
    if aspect not in ASPECT_MODES:
        raise ValueError(f"aspect={aspect!r}: expected one of {ASPECT_MODES}")
    img = Image.fromarray(np.ascontiguousarray(frame))
    fh, fw = frame.shape[:2]
    if aspect == "resize" or fh * w == fw * h:
        return np.asarray(img.resize((w, h), Image.BILINEAR))
    scale = min(h / fh, w / fw) if aspect == "pad" else max(h / fh, w / fw)
    sh, sw = max(1, round(fh * scale)), max(1, round(fw * scale))
    img = img.resize((sw, sh), Image.BILINEAR)
    if aspect == "crop":
        top, left = (sh - h) // 2, (sw - w) // 2
        return np.asarray(img.crop((left, top, left + w, top + h)))
    out = np.zeros((h, w, 3), np.uint8)
    top, left = (h - sh) // 2, (w - sw) // 2
    out[top:top + sh, left:left + sw] = np.asarray(img)
    return out


def fit_frames(frames: np.ndarray, size: tuple[int, int], aspect: str = "resize") -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, h, w, 3) uint8, frame by frame through `fit_frame`."""
    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([fit_frame(f, size, aspect) for f in frames]) if len(frames) else \
        np.zeros((0, *size, 3), np.uint8)


__all__ = ["fit_frame", "fit_frames"]
