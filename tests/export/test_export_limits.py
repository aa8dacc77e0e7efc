"""An export directory carries what serving needs: the robot interface, the stats the action limits come from and
the trained instructions; `rfm serve` on the export clips exactly as on the checkpoint. int8 calibrated on synthetic
images says so (a logged warning at export time, "calibration": "synthetic" in export.json, a line from `rfm export`).

One server per backend, each started the way `rfm serve` starts it (the CLI's arguments to serving.server.serve).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import httpx
import numpy as np
import pytest
import torch

from rfm import RFMPolicy
from rfm.cli.main import main
from rfm.config import RobotInterface
from rfm.constants import STATS_FILE
from rfm.export import ExportConfig, export_checkpoint, read_manifest
from rfm.export.exporter import calibration_source
from rfm.runtime.limits import ActionLimits
from rfm.runtime.onnx_runner import OnnxRunner
from serving.server import ServerThread
from tests.conftest import random_obs
from tests.serving.helpers import json_body

pytestmark = pytest.mark.integration  # real servers

K = [[100.0, 0.0, 80.0], [0.0, 100.0, 60.0], [0.0, 0.0, 1.0]]  # pixels, for camera a's native 120 x 160 frames
ITF = RobotInterface(
    cameras=["a", "b"],
    image_size=(64, 64),
    state_names=["x", "y", "z"],
    action_names=["vx", "vy"],
    chunk_size=4,
    robot_type="test",
    native_sizes={"a": (120, 160)},
    aspect="pad",
    calibration={
        "a": {"intrinsics": K, "extrinsics": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 2.0]]},
        "b": {"projection": [[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 2.0]]},
    },
    ee_position=["x", "y", "z"],
)
# A tiny action range (std 1 keeps the outputs ~1): every prediction is out of range, on every dim.
STATS = {
    "observation.state": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "min": [-3, -3, -3], "max": [3, 3, 3]},
    "action": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [-0.001, -0.002], "max": [0.001, 0.003]},
}
TRAINED = ["open the drawer", "press the button"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=ITF, stats=STATS)
    policy.meta["data"] = {"tasks": TRAINED}  # what `rfm train` records
    return policy.save_pretrained(tmp_path_factory.mktemp("limits") / "ck")


@pytest.fixture(scope="module")
def fp32_export(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "fp32"
    cfg = ExportConfig(parity_samples=2, text_encoder=False, instructions=["push"], exporter="torchscript")
    export_checkpoint(checkpoint, out, cfg)
    return out


@pytest.fixture(scope="module")
def int8_cli(checkpoint, tmp_path_factory):
    """int8 through `rfm export`, no --calib-dataset: (export dir, stdout, warnings logged)."""
    out = tmp_path_factory.mktemp("exp") / "int8"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--precision", "int8",
            "--calib-samples", "4", "--parity-samples", "2", "--no-text-encoder", "--instructions", "push"]
    buf, warned = io.StringIO(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("rfm.export")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever level an earlier test left on the root logger
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(buf):
            assert main(argv) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, buf.getvalue(), warned


def limits(path) -> ActionLimits:
    return ActionLimits.from_stats(path, ITF.action_names)


def test_export_dir_carries_interface_stats_and_trained_instructions(checkpoint, fp32_export):
    m = read_manifest(fp32_export)
    assert RobotInterface.from_dict(m["interface"]) == ITF  # native sizes, aspect, calibration, ee_position
    assert OnnxRunner.from_dir(fp32_export).interface == ITF
    assert m["stats"] == STATS_FILE and m["calibration"] is None
    assert json.loads((fp32_export / STATS_FILE).read_text()) == json.loads((checkpoint / STATS_FILE).read_text())
    ck, ex = limits(checkpoint), limits(fp32_export)
    np.testing.assert_array_equal(ex.low, ck.low)
    np.testing.assert_array_equal(ex.high, ck.high)
    assert m["trained_instructions"] == TRAINED
    assert m["text"]["instructions"]["count"] == 3  # "push" + the trained ones: served without a text graph
    runner = OnnxRunner.from_dir(fp32_export)
    assert set(runner.text.table) == {"push", *TRAINED}
    runner.snap_instructions(0.5)  # the trained instructions' embeddings come from the table


def serve_call(monkeypatch, argv: list[str]) -> dict:
    """`rfm serve ARGV` up to starting uvicorn: the runner loader, config and checkpoint it hands to serve()."""
    import serving.server

    seen: dict = {}

    def fake_serve(runner, config, host="127.0.0.1", port=8000, checkpoint=None, log_level="info", sock=None):
        seen.update(runner=runner, config=config, checkpoint=checkpoint)
        sock.close()  # bound by `rfm serve` before loading: a port of the OS's choosing (--port 0)

    monkeypatch.setattr(serving.server, "serve", fake_serve)
    monkeypatch.setattr(serving.server, "set_threads", lambda n: n)  # leave this process's torch threads alone
    assert main(["serve", "--max-batch", "1", "--log-level", "warning", "--port", "0", *argv]) == 0
    return seen


def act(seen: dict, obs: dict) -> tuple[dict, dict, str]:
    """One /v1/act on a server started as `rfm serve` would: (response, /v1/models, /metrics text)."""
    with ServerThread(seen["runner"], seen["config"], checkpoint=seen["checkpoint"]) as s:
        assert s.state.load_error is None, s.state.load_error
        r = httpx.post(s.url + "/v1/act", json=json_body(obs), timeout=30)
        assert r.status_code == 200, r.text
        return r.json(), httpx.get(s.url + "/v1/models").json(), httpx.get(s.url + "/metrics").text


def test_serving_the_export_clips_as_the_checkpoint(checkpoint, fp32_export, int8_cli, monkeypatch, rng):
    obs = random_obs(ITF, rng, "open the drawer")
    ck_resp, ck_models, ck_metrics = act(serve_call(monkeypatch, ["--checkpoint", str(checkpoint)]), obs)
    lim = ck_models["server"]["action_limits"]
    assert ck_resp["clipped"] and ck_resp["clipped_dims"] == ["vx", "vy"]
    assert "rfm_actions_clipped_total 1.0" in ck_metrics
    for export in (fp32_export, int8_cli[0]):
        resp, models, metrics = act(
            serve_call(monkeypatch, ["--checkpoint", str(export), "--backend", "onnx"]), obs)
        assert models["backend"] == "onnx"
        assert {k: models["server"]["action_limits"][k] for k in ("min", "max")} == \
            {k: lim[k] for k in ("min", "max")}
        assert models["server"]["action_limits"]["source"].startswith(str(export / STATS_FILE))
        assert resp["clipped"] and resp["clipped_dims"] == ck_resp["clipped_dims"]
        assert resp["actions"] == ck_resp["actions"]  # every value pinned to a bound: the same numbers
        assert "rfm_actions_clipped_total 1.0" in metrics


def test_a_device_loop_clips_with_the_limits_the_server_uses(checkpoint, fp32_export, rng):
    """Outside the server nothing clipped: a device running an export in its own loop got actions beyond the
    robot's limits. ActionLimits.for_model gives it the server's limits for a checkpoint or an export."""
    from rfm.runtime import ActionLimits, load_runner

    raw = load_runner(fp32_export).predict(random_obs(ITF, rng, "open the drawer"))
    for model in (checkpoint, fp32_export):
        lim = ActionLimits.for_model(model)
        np.testing.assert_array_equal(lim.high, limits(checkpoint).high)
        clipped, dims = lim.clip(raw)
        assert dims == ["vx", "vy"] and np.all(clipped <= lim.high) and np.all(clipped >= lim.low)


def test_an_export_is_not_calibrated_again_by_the_server(fp32_export, monkeypatch, capsys):
    """`rfm serve --checkpoint EXPORT --calib-dataset D` ignored the dataset without a word."""
    assert main(["serve", "--checkpoint", str(fp32_export), "--calib-dataset", "/data/robot", "--port", "0"]) == 2
    assert "calibrated when it was exported" in capsys.readouterr().err


def test_action_limits_file_still_overrides(fp32_export, monkeypatch, tmp_path, rng):
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"min": [-100, -100], "max": [100, 100]}))
    seen = serve_call(monkeypatch, ["--checkpoint", str(fp32_export), "--backend", "onnx",
                                    "--action-limits", str(path)])
    resp, models, _ = act(seen, random_obs(ITF, rng, "push"))
    assert models["server"]["action_limits"] == {"source": str(path), "min": [-100.0] * 2, "max": [100.0] * 2}
    assert not resp["clipped"] and resp["clipped_dims"] == []


def test_serving_an_export_without_stats_warns(fp32_export, monkeypatch, tmp_path, caplog):
    old = tmp_path / "old-export"
    shutil.copytree(fp32_export, old)
    (old / STATS_FILE).unlink()
    manifest = json.loads((old / "export.json").read_text())
    del manifest["files"]  # an export from before rfm recorded stats.json, or the file record
    (old / "export.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="rfm.serving"):
        serve_call(monkeypatch, ["--checkpoint", str(old), "--backend", "onnx"])
    assert "serving WITHOUT action limits" in caplog.text


def test_int8_without_a_dataset_says_it_calibrated_on_synthetic_images(checkpoint, int8_cli, caplog):
    out, stdout, warned = int8_cli
    assert any("calibrating int8 on 4 SYNTHETIC observations" in w for w in warned)
    m = read_manifest(out)
    assert m["calibration"] == "synthetic" and m["quantization"]["calibration"]["source"] == "synthetic"
    assert "calibration: synthetic (not camera frames: pass --calib-dataset" in stdout
    with caplog.at_level("WARNING", logger="rfm.runtime"):  # its parity, on synthetic frames, says nothing of real ones
        OnnxRunner.from_dir(out)
    assert "calibrated on synthetic" in caplog.text or "calibrated and checked on synthetic frames" in caplog.text
    np.testing.assert_array_equal(limits(out).high, limits(checkpoint).high)
    cfg = ExportConfig(precision="int8", calib_dataset="/data/robot")
    assert calibration_source(cfg) == "dataset: /data/robot"
    assert calibration_source(ExportConfig(precision="fp16")) is None
