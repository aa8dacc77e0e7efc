"""Offline evaluation (`rfm eval --dataset`): open-loop action errors of tiny checkpoints trained on the real-lerobot
fixtures, checked against a direct computation with RFMPolicy.predict, and the same number from training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.cli.main import main
from rfm.constants import ACTION
from rfm.data.reader import LeRobotDataset
from rfm.eval.card import weights_digest
from rfm.eval.offline import offline_eval
from rfm.imaging import fit_frames
from rfm.runtime import load_runner
from rfm.train.config import TrainConfig
from rfm.train.loop import train

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures/lerobot-v3.0")
IMAGE, ALOHA = FIXTURES / "image", FIXTURES / "aloha-480x640"


def _train(dataset: Path, out: Path, ema_decay: float = 0.0) -> Path:
    """A tiny checkpoint; the last episode held out, by default no EMA."""
    cfg = TrainConfig(dataset=str(dataset), out=str(out), preset="tiny", steps=6, batch_size=8, chunk_size=8,
                      image_size=(48, 48), num_workers=0, save_every=6, log_every=3, warmup_steps=2, val_episodes=1,
                      ema_decay=ema_decay)
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _train(IMAGE, tmp_path_factory.mktemp("offline") / "image")


def test_errors_equal_a_direct_computation_with_policy_predict(run):
    """Frames 0, 12, 24, 36 of episode 0 (stride 12): the last chunk runs past the episode end (40 frames) and its
    padded steps are left out."""
    res, preds = offline_eval(run / "checkpoint", IMAGE, episodes=[0], stride=12)
    policy = RFMPolicy.from_pretrained(run / "checkpoint")
    itf, ds = policy.interface, LeRobotDataset(IMAGE)
    ep = ds.episode(0)
    t = np.array([0, 12, 24, 36])
    images = np.stack([fit_frames(ds.decode_episode(0, c)[t], itf.image_size) for c in itf.cameras], 1)  # (4,N,H,W,3)
    pred = policy.predict(images.transpose(0, 1, 4, 2, 3), ds.states[ep.start + t], [ds.instruction(ep.start)] * 4)
    idx = ep.start + t[:, None] + np.arange(8)  # (4, H)
    keep = idx < ep.stop
    err = np.abs(pred - ds.actions[np.minimum(idx, ep.stop - 1)])[keep]  # (valid steps, D_a)
    mae = err.mean(0)
    std = np.asarray(ds.stats[ACTION]["std"])

    assert res["kind"] == "offline" and res["episodes"] == [0] and res["frames"] == 4 and keep.sum() == 28
    assert list(res["mae"]) == itf.action_names == ["dx", "dy", "dz", "dg"]
    np.testing.assert_allclose(list(res["mae"].values()), mae, rtol=1e-5)
    np.testing.assert_allclose(list(res["nmae"].values()), mae / std, rtol=1e-5)
    assert res["mean_nmae"] == pytest.approx(float(np.mean(mae / std)), rel=1e-5)
    by_step = [np.abs(pred[keep[:, h], h] - ds.actions[idx[keep[:, h], h]]).mean() for h in range(8)]
    assert len(res["mae_by_step"]) == 8
    np.testing.assert_allclose(res["mae_by_step"], by_step, rtol=1e-5)
    assert res["worst_episodes"] == [{"episode": 0, "frames": 4, "mae": pytest.approx(float(mae.mean()), rel=1e-5),
                                      "nmae": pytest.approx(res["mean_nmae"])}]
    np.testing.assert_allclose(preds[0].pred, pred, atol=1e-5)
    assert res["weights_sha256"] == weights_digest(run / "checkpoint")


def test_a_runner_and_an_opened_dataset_need_no_paths(run):
    """In a notebook: a runner in memory and a LeRobotDataset already open give the same numbers as the paths."""
    by_path, _ = offline_eval(run / "checkpoint", IMAGE, episodes=[2], stride=8)
    in_memory, _ = offline_eval(None, LeRobotDataset(IMAGE), episodes=[2], stride=8,
                                runner=load_runner(run / "checkpoint", seed=0))
    assert in_memory["mae"] == by_path["mae"] and in_memory["checkpoint"] is None
    with pytest.raises(ValueError, match="give a checkpoint directory or a runner"):
        offline_eval(None, IMAGE)


def test_chunks_are_scored_as_the_server_clips_them(run, tmp_path):
    """A dimension the dataset never moves is clipped to its value by rfm serve; offline eval scored the model's
    raw output there (MAE 0.41 on a dimension the robot always gets at 0)."""
    import json
    import shutil

    ckpt = shutil.copytree(run / "checkpoint", tmp_path / "ckpt")
    stats = json.loads((ckpt / "stats.json").read_text())
    stats["action"]["min"][0] = stats["action"]["max"][0] = 0.25  # as if dx never moved from 0.25
    (ckpt / "stats.json").write_text(json.dumps(stats))
    res, preds = offline_eval(ckpt, IMAGE, episodes=[0], stride=12)
    assert "stats.json" in res["action_limits"] and all(np.all(p.pred[..., 0] == 0.25) for p in preds)


def test_training_reports_the_same_error_on_its_held_out_episode(run):
    """By default the episodes training held out; its val_mae is the offline mean MAE of the same weights."""
    res, _ = offline_eval(run / "checkpoint", IMAGE)
    assert res["episodes"] == [2] and "held out" in res["episodes_source"] and res["frames"] == 40
    rows = list(csv.DictReader((run / "logs" / "train.csv").read_text().splitlines()))
    assert float(rows[-1]["val_mae"]) == pytest.approx(res["mean_mae"], abs=2e-5)


def test_training_with_ema_reports_the_error_of_the_weights_it_saves(tmp_path):
    """With EMA the checkpoint holds the averaged weights, and val_mae scored the raw ones: 0.50 in train.csv where
    rfm eval --dataset measured 0.29 on the same held-out episode (a helper's audit of the ALOHA fine-tune)."""
    run = _train(IMAGE, tmp_path / "ema", ema_decay=0.8)
    res, _ = offline_eval(run / "checkpoint", IMAGE)
    rows = list(csv.DictReader((run / "logs" / "train.csv").read_text().splitlines()))
    assert float(rows[-1]["val_mae"]) == pytest.approx(res["mean_mae"], abs=2e-5)


def test_cli_writes_json_plot_and_card(run, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoint", ckpt, ignore=shutil.ignore_patterns("training_state"))
    out, png = tmp_path / "r.json", tmp_path / "plot.png"
    assert main(["eval", "--dataset", str(IMAGE), "--checkpoint", str(ckpt), "--last", "2", "--stride", "4",
                 "--out", str(out), "--plot", str(png), "--update-card", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nMAE" in printed and "worst episodes" in printed and "the last 2" in printed
    res = json.loads(out.read_text())
    assert {"kind", "checkpoint", "dataset", "episodes", "frames", "mae", "mae_by_step", "nmae", "mean_nmae",
            "worst_episodes", "weights_sha256"} <= set(res)
    assert res["episodes"] == [1, 2] and res["frames"] == 20 and len(res["worst_episodes"]) == 2
    assert png.stat().st_size > 10_000
    entry = json.loads((ckpt / "config.json").read_text())["meta"]["evaluation"]["offline-image"]
    assert entry["kind"] == "offline" and entry["mean_nmae"] == round(res["mean_nmae"], 6)
    assert main(["card", str(ckpt)]) == 0 and "offline-image" in capsys.readouterr().out
    # the saved results go into another copy of the same weights; other weights refuse them
    copy = tmp_path / "copy"
    shutil.copytree(run / "checkpoint", copy, ignore=shutil.ignore_patterns("training_state"))
    assert main(["card", str(copy), "--add", str(out)]) == 0
    assert "offline-image" in json.loads((copy / "config.json").read_text())["meta"]["evaluation"]


@pytest.mark.parametrize("argv, said", [
    (["--dataset", str(ALOHA)], "interface.action_names"),
    (["--dataset", str(IMAGE), "--episodes", "0,7"], "no episode [7]"),
    (["--dataset", str(IMAGE), "--last", "4"], "has 3 episodes"),
    (["--dataset", "/nonexistent/data"], "/nonexistent/data: dataset directory not found"),
    (["--dataset", str(IMAGE), "--tasks", "reach-v3"], "--tasks: simulation only"),
    (["--stride", "2"], "--stride: only with --dataset"),
])
def test_cli_errors_name_the_field(run, capsys, argv, said):
    assert main(["eval", "--checkpoint", str(run / "checkpoint"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_native_size_dataset_is_fitted_as_serving_fits_it(tmp_path):
    """ALOHA-like 480x640 frames, a 48x48 model: the offline chunks are those the runner serves for the native
    frames of the same observation."""
    ckpt = _train(ALOHA, tmp_path / "aloha") / "checkpoint"
    res, preds = offline_eval(ckpt, ALOHA, episodes=[1], stride=10)
    assert res["frames"] == 5 and len(res["mae"]) == 14 and all(np.isfinite(list(res["mae"].values())))
    runner, ds = load_runner(ckpt, device="cpu"), LeRobotDataset(ALOHA)
    g = ds.episode(1).start + 20
    obs = ds.get_frame(g)
    assert obs["images"]["cam_high"].shape == (480, 640, 3)
    served = runner.predict({"images": obs["images"], "state": obs["state"], "instruction": obs["instruction"]})
    np.testing.assert_allclose(preds[0].pred[2], served, atol=1e-5)
