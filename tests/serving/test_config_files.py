"""Action limits, openpi mapping and the safe msgpack-numpy codec, without a server."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from rfm.runtime.limits import ActionLimits
from serving.codec import PayloadError, loads
from serving.openpi import OpenpiMapping, pack

NAMES = ["vx", "vy"]


def test_limits_from_stats_with_margin_and_clip(tmp_path):
    (tmp_path / "stats.json").write_text(json.dumps({"action": {"min": [-1.0, 0.0], "max": [1.0, 2.0]}}))
    lim = ActionLimits.from_stats(tmp_path, NAMES, margin=0.1)
    np.testing.assert_allclose(lim.low, [-1.2, -0.2])
    np.testing.assert_allclose(lim.high, [1.2, 2.2])
    out, dims = lim.clip(np.array([[0.0, 5.0], [-3.0, 1.0]], np.float32))
    assert dims == ["vx", "vy"] and out.tolist() == [[0.0, pytest.approx(2.2)], [pytest.approx(-1.2), 1.0]]
    assert ActionLimits.from_stats(tmp_path / "nowhere", NAMES) is None


def test_limits_file_errors_name_the_file(tmp_path):
    f = tmp_path / "lim.json"
    f.write_text(json.dumps({"min": [0.0], "max": [1.0]}))
    with pytest.raises(ValueError, match=r"lim.json: limits have 1 min and 1 max values, the model has 2 actions"):
        ActionLimits.from_file(f, NAMES)
    f.write_text(json.dumps({"vx": [0, 1]}))
    with pytest.raises(ValueError, match=r"expected .*for every action \['vx', 'vy'\]"):
        ActionLimits.from_file(f, NAMES)
    f.write_text(json.dumps({"min": [1.0, 0.0], "max": [0.0, 1.0]}))
    with pytest.raises(ValueError, match="min <= max"):
        ActionLimits.from_file(f, NAMES)


def test_openpi_mapping_default_file_and_nested_keys(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    m = OpenpiMapping.default(["front", "wrist", "side"])
    assert m.images == {"observation/image": "front", "observation/wrist_image": "wrist",
                        "observation/image_2": "side"}
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"images": {"images/cam_high": "front", "images/cam_wrist": "wrist"},
                             "state": ["observation/joint_position", "observation/gripper_position"]}))
    m = OpenpiMapping.from_file(f, ["front", "wrist"])
    obs = m.to_observation({"images": {"cam_high": img, "cam_wrist": img}, "observation/joint_position": [1, 2],
                            "observation/gripper_position": [3], "prompt": "fold"}, ["front", "wrist"],
                           {"front": [(4, 4)], "wrist": [(4, 4)]})
    assert obs["state"].tolist() == [1, 2, 3] and obs["instruction"] == "fold" and set(obs["images"]) == {
        "front", "wrist"}
    f.write_text(json.dumps({"images": {"observation/image": "top"}}))
    with pytest.raises(ValueError, match=r"unknown camera\(s\) \['top'\]"):
        OpenpiMapping.from_file(f, ["front"])


def test_an_openpi_png_of_another_size_is_decoded_where_the_server_resizes_frames():
    """A frame at a size its camera does not send is not decoded (an undecoded stand-in of that size, which the
    runtime refuses), unless the server resizes whatever it is sent (--resize-images), on /openpi as on /v1/act."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 100, 50)).save(buf, format="PNG")
    m = OpenpiMapping.default(["front"])
    obs = {"observation/image": buf.getvalue(), "observation/state": [0.0], "prompt": "go"}
    sizes = {"front": [(4, 4)]}
    assert not m.to_observation(obs, ["front"], sizes)["images"]["front"].any()  # the stand-in: not decoded
    decoded = m.to_observation(obs, ["front"], sizes, any_size=True)["images"]["front"]
    assert decoded.shape == (6, 8, 3) and decoded[0, 0].tolist() == [200, 100, 50]


def test_msgpack_numpy_round_trip_and_refusals():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    from openpi_client import msgpack_numpy

    assert np.array_equal(msgpack_numpy.unpackb(pack({"a": a}))["a"], a)  # our packer -> openpi's unpacker
    assert np.array_equal(loads(msgpack_numpy.packb({"a": a}), "msgpack")["a"], a)  # and back
    bad = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 4, b"dtype": "<f4", b"shape": [2]})
    with pytest.raises(PayloadError, match="needs 8 bytes, 'data' has 4"):
        loads(bad, "msgpack")
    with pytest.raises(PayloadError, match="not valid msgpack"):
        loads(msgpack.packb(msgpack.ExtType(1, b"x")) + b"\xc1", "msgpack")
