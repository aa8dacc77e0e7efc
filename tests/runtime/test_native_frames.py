"""Native camera frames: fitted to the model's resolution by one path (rfm.imaging), consistent with calibration."""

from __future__ import annotations

import numpy as np
import pytest

from rfm.config import RobotInterface
from rfm.imaging import fit_frame
from rfm.runtime.observation import ObservationError, accepted_sizes, check_image, check_observation


def _interface(**kw) -> RobotInterface:
    base = {"cameras": ["front", "wrist"], "image_size": (96, 96), "state_names": ["j0", "j1"],
            "action_names": ["a0", "a1"], "native_sizes": {"front": (480, 640), "wrist": (240, 320)}}
    return RobotInterface(**{**base, **kw})


def test_native_frames_are_fitted_exactly_as_training_fits_them():
    itf = _interface()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    got = check_image("front", frame, itf)
    assert got.shape == (3, 96, 96)
    np.testing.assert_array_equal(got, fit_frame(frame, (96, 96)).transpose(2, 0, 1))
    np.testing.assert_array_equal(check_image("front", frame.transpose(2, 0, 1), itf), got)  # CHW works too
    small = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # already the model's size: passed through
    np.testing.assert_array_equal(check_image("wrist", small, itf), small.transpose(2, 0, 1))
    assert accepted_sizes(itf) == {"front": [(480, 640), (96, 96)], "wrist": [(240, 320), (96, 96)]}


def test_a_grey_cameras_frames_are_taken_as_training_read_its_recording():
    """A mono camera's dataset is read as grey RGB (its value in all three channels) for training; the server
    refused the same camera's (H, W, 1) frames (422), so each robot had to copy the channel itself."""
    from PIL import Image

    itf = _interface()
    grey = np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8)
    as_trained = np.asarray(Image.fromarray(grey).convert("RGB"))  # rfm.data.frames reads a grey PNG so
    want = check_image("front", as_trained, itf)
    for sent in (grey, grey[..., None], grey[None]):
        np.testing.assert_array_equal(check_image("front", sent, itf), want)


def test_a_frame_of_another_size_is_an_error_naming_the_declared_size():
    itf = _interface()
    with pytest.raises(ObservationError, match=r"image 'wrist' is 480x640 \(H x W\): expected 240x320 "
                                               r"\(interface.native_sizes.wrist\) or the model's input size 96x96"):
        check_observation({"images": {"front": np.zeros((480, 640, 3), np.uint8),
                                      "wrist": np.zeros((480, 640, 3), np.uint8)},
                           "state": [0.0, 0.0], "instruction": "x"}, itf)
    # the server's --resize-images fits any size instead
    assert check_image("wrist", np.zeros((480, 640, 3), np.uint8), itf, resize=True).shape == (3, 96, 96)


@pytest.mark.parametrize("aspect", ["resize", "pad", "crop"])
def test_where_a_calibrated_point_lands_after_fitting_is_where_the_projection_says(aspect):
    """A bright dot drawn where a world point projects in the native 480 x 640 frame ends up, after fit_frame, at
    the model-input coordinates interface.projections() gives for that aspect policy."""
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    E = np.hstack([np.eye(3), [[0.0], [0.0], [2.0]]])
    cal = {c: {"intrinsics": K.tolist(), "extrinsics": E.tolist()} for c in ("front", "wrist")}
    itf = _interface(aspect=aspect, calibration=cal, native_sizes={"front": (480, 640), "wrist": (480, 640)})
    point = np.array([0.3, -0.2, 0.0, 1.0])
    px = K @ E @ point
    u, v = px[:2] / px[2]  # native pixel (col, row) = (394.5, 189.5)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[int(v) - 8:int(v) + 10, int(u) - 8:int(u) + 10] = 255  # an 18 px square centred on (u, v)
    fitted = fit_frame(frame, (96, 96), aspect).astype(float)[..., 0]
    rows, cols = np.mgrid[0:96, 0:96]
    centre = np.array([(cols * fitted).sum(), (rows * fitted).sum()]) / fitted.sum()  # pixel (col, row)
    seen = (centre + 0.5) / 96 * 2 - 1  # normalised (u, v) in the model's input
    p = itf.projections()[0] @ point
    np.testing.assert_allclose(seen, p[:2] / p[2], atol=0.02)  # within one model pixel
