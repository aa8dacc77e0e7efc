"""Bad input when adapting a new robot: a clear one-line error naming the field, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

from rfm.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
ALOHA = ROOT.parent / "shared" / "fixtures" / "lerobot-v3.0" / "aloha-480x640"
if not ALOHA.exists():
    ALOHA = Path("/work/shared/fixtures/lerobot-v3.0/aloha-480x640")
DEFAULT = ROOT / "checkpoints" / "default"


def _fails(capsys, *argv: str) -> str:
    assert main(["train", "--dataset", str(ALOHA), "--steps", "1", "--num-workers", "0", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("rfm train: error:")
    return err


def test_a_calibration_naming_an_unknown_camera(tmp_path, capsys):
    robot = tmp_path / "robot.json"
    robot.write_text(json.dumps({"calibration": {"cam_top": {"projection": [[1, 0, 0, 0], [0, 1, 0, 0],
                                                                           [0, 0, 1, 2]]}}}))
    err = _fails(capsys, "--out", str(tmp_path / "run"), "--interface", str(robot))
    assert "interface.calibration names camera 'cam_top'" in err and "cam_high" in err
    assert not (tmp_path / "run").exists()


def test_pixel_intrinsics_of_the_wrong_shape(tmp_path, capsys):
    robot = tmp_path / "robot.yaml"
    robot.write_text("calibration:\n  cam_high:\n    intrinsics: [[500, 0, 320], [0, 500, 240]]\n"
                     "    extrinsics: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2]]\n")
    err = _fails(capsys, "--out", str(tmp_path / "run"), "--interface", str(robot))
    assert "interface.calibration.cam_high.intrinsics: expected a finite 3 x 3 matrix" in err
    assert not (tmp_path / "run").exists()


def test_keeping_the_init_stats_of_another_action_space(tmp_path, capsys):
    err = _fails(capsys, "--out", str(tmp_path / "run"), "--init", str(DEFAULT), "--keep-init-stats")
    assert "interface.state_names" in err or "interface.action_names" in err
    assert "checkpoints/default" in err and not (tmp_path / "run").exists()


def test_asking_for_triangulated_points_without_calibration(tmp_path, capsys):
    err = _fails(capsys, "--out", str(tmp_path / "run"), "--preset", "tiny", "--model", '{"vision_points": 2}')
    assert "interface.calibration" in err and not (tmp_path / "run").exists()
