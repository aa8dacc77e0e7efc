"""Training pipeline on a real LeRobot dataset (written by the real lerobot package): train, checkpoint, resume,
fine-tune onto a new robot."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.train.config import TrainConfig
from rfm.train.loop import train

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def _cfg(out: Path, **kw) -> TrainConfig:
    base = {"dataset": str(FIXTURE), "out": str(out), "preset": "tiny", "steps": 12, "batch_size": 8, "chunk_size": 8,
                "image_size": (48, 48), "num_workers": 0, "save_every": 6, "log_every": 3, "warmup_steps": 2, "val_episodes": 1}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(_cfg(out), progress=False)
    return out


def test_run_writes_checkpoint_logs_and_curve(run):
    ckpt = run / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "model.safetensors", "stats.json", "README.md",
                                                "training_state"}
    rows = list(csv.DictReader((run / "logs" / "train.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert all(float(r["loss"]) > 0 for r in rows) and rows[-1]["val_loss"]
    assert (run / "logs" / "loss.png").stat().st_size > 1000
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["interface"]["cameras"] == ["top", "wrist"] and cfg["interface"]["image_size"] == [48, 48]
    assert cfg["meta"]["training"]["steps_done"] == 12 and cfg["meta"]["data"]["episodes"] == 2
    stats = json.loads((ckpt / "stats.json").read_text())
    assert len(stats["action"]["mean"]) == 4


def test_checkpoint_serves_predictions(run):
    policy = RFMPolicy.from_pretrained(run / "checkpoint")
    images = np.zeros((1, 2, 3, 48, 48), np.uint8)
    out = policy.predict(images, np.zeros((1, 4), np.float32), ["reach the red target"])
    assert out.shape == (1, 8, 4) and np.all(np.isfinite(out))


def test_resume_continues_from_the_saved_step(run, tmp_path, capsys):
    """A resume that changes the run's settings says which (--steps alone reshapes the learning-rate decay, and
    nothing said so); the settings the command repeats are not named."""
    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    train(_cfg(out, steps=15, resume=True), progress=False)
    said = capsys.readouterr().out
    assert "--resume: this command changes the run's settings (steps 12 -> 15)" in said
    rows = list(csv.DictReader((out / "logs" / "train.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12, 15]  # appended, not restarted
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["training"]["steps_done"] == 15


def test_resume_continues_the_runs_own_model_whatever_this_command_would_build(run, tmp_path, capsys):
    """A run is resumed with its saved model, not one built again from the command line: resumed by a newer rfm
    (other defaults) or with a flag given otherwise, the model differed and loading its state failed with a
    PyTorch traceback (size mismatch)."""
    out = tmp_path / "other-flags"
    shutil.copytree(run, out)
    train(_cfg(out, steps=15, resume=True, image_size=(64, 64), head="flow"), progress=False)
    said = capsys.readouterr().out
    assert "resumed from" in said and "continues its own model" in said and "head" in said
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["interface"]["image_size"] == [48, 48] and cfg["model"]["head"] == "chunk"
    assert cfg["meta"]["training"]["steps_done"] == 15
    started = json.loads((out / "train_config.json").read_text())
    assert started["image_size"] == [48, 48] and started["head"] != "flow" and started["steps"] == 15


def test_resume_after_a_kill_between_the_renames_of_a_save_continues_the_saved_step(run, tmp_path, capsys):
    """A save killed after moving the last checkpoint aside and before putting the new one in place left no
    checkpoint/: --resume started over from step 0 without a word. The run now puts the last one back first."""
    import random

    out = tmp_path / "killed"
    shutil.copytree(run, out)
    (out / "checkpoint").rename(out / ".checkpoint.old-999999999-deadbeef")  # as the killed process left it
    state = json.loads((out / ".checkpoint.old-999999999-deadbeef" / "training_state" / "state.json").read_text())
    train(_cfg(out, steps=15, resume=True), progress=False)
    assert f"resumed from {out / 'checkpoint'} at step 12" in capsys.readouterr().out
    assert json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]["steps_done"] == 15
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".checkpoint")) == []
    assert "rng_numpy_pos" in state and random.getstate()[1] == tuple(
        json.loads((out / "checkpoint" / "training_state" / "state.json").read_text())["rng_python"])


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(run, tmp_path, monkeypatch, capsys):
    import errno

    import rfm.model.serialization as ser
    from rfm.cli.main import main

    out = tmp_path / "full"
    shutil.copytree(run, out)
    before = (out / "checkpoint" / "model.safetensors").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ser, "model_card", full)
    code = main(["train", "--dataset", str(FIXTURE), "--out", str(out), "--preset", "tiny", "--steps", "14",
                 "--batch-size", "8", "--chunk-size", "8", "--image-size", "48", "48", "--num-workers", "0",
                 "--save-every", "14", "--val-episodes", "1", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on the device" in err and "Traceback" not in err
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before


def test_a_rerun_into_a_finished_run_neither_starts_over_nor_replaces_it(run, tmp_path):
    """Without --resume or --overwrite a checkpoint already in OUT is an error before any data is read."""
    from rfm.config import ConfigError

    out = tmp_path / "again"
    shutil.copytree(run, out)
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"holds a run trained 12 steps: --resume \(resume=True\) continues it, --overwrite"):
        train(_cfg(out, dataset=str(tmp_path / "no-such-dataset")), progress=False)
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    # a checkpoint without training state (copied in, or a bundled one): --resume cannot continue it, and must
    # not replace it with a new model
    copied = tmp_path / "copied"
    shutil.copytree(run / "checkpoint", copied / "checkpoint", ignore=shutil.ignore_patterns("training_state"))
    kept = (copied / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"--resume \(resume=True\): .* holds a checkpoint without training state .* --init "):
        train(_cfg(copied, resume=True), progress=False)
    assert (copied / "checkpoint" / "model.safetensors").read_bytes() == kept
    train(_cfg(out, steps=3, save_every=3, val_episodes=0, overwrite=True), progress=False)
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["training"]["steps_done"] == 3  # started over


def test_finetune_a_new_robot_reinitialises_only_mismatched_layers(run, tmp_path):
    # same dataset, but a different chunk size and one camera: vision/fusion weights carry over
    out = tmp_path / "ft"
    train(_cfg(out, steps=3, chunk_size=4, cameras=["wrist"], init=str(run / "checkpoint"), val_episodes=0),
          progress=False)
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    reinit = set(meta["training"]["init_reinitialised"])
    assert reinit == {"cam_embed", "action_pos"}
    # the card names what it was fine-tuned from, and that checkpoint's data, tasks and steps
    parent = json.loads((run / "checkpoint" / "config.json").read_text())["meta"]
    assert parent["data"]["tasks"]
    assert meta["lineage"] == [{"model_id": "tiny", "model_version": parent["model_version"],
                                "path": str(run / "checkpoint"), "dataset": str(FIXTURE),
                                "tasks": parent["data"]["tasks"], "steps": 12}]
    assert "## Lineage" in (out / "checkpoint" / "README.md").read_text()


def test_instruction_variants_train_and_are_recorded_in_the_card(tmp_path):
    out = tmp_path / "variants"
    train(_cfg(out, steps=3, val_episodes=0, instruction_variants="metaworld", variant_prob=1.0), progress=False)
    training = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert training["instruction_variants"] == "metaworld" and training["variant_prob"] == 1.0


def test_action_loss_weights_train_by_name_and_a_wrong_name_lists_the_robots_actions(tmp_path):
    out = tmp_path / "weighted"
    train(_cfg(out, steps=2, val_episodes=0, action_loss_weights={"dg": 4}), progress=False)
    training = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]
    assert training["action_loss_weights"] == {"dg": 4.0}
    with pytest.raises(ValueError, match="'gripper', not an action of this robot: its actions are dx, dy, dz, dg"):
        train(_cfg(tmp_path / "x", action_loss_weights={"gripper": 4}), progress=False)
    with pytest.raises(ValueError, match="every action dimension at weight 0"):
        train(_cfg(tmp_path / "y", action_loss_weights=dict.fromkeys(["dx", "dy", "dz", "dg"], 0)), progress=False)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="action_loss_weights.*finite weights >= 0"):
            _cfg(tmp_path / "z", action_loss_weights={"dg": bad})


def test_bad_dataset_path_is_named(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="nope"):
        train(_cfg(tmp_path / "x", dataset=str(tmp_path / "nope")), progress=False)


def test_sigterm_finishes_the_step_saves_and_resume_continues(tmp_path, monkeypatch):
    """A preempted run (SIGTERM; Ctrl-C likewise) saves the step it was in, so --resume loses nothing."""
    import signal

    from rfm.train import loop
    from rfm.train.stop import TrainingStopped

    calls = {"n": 0}
    real = loop._train_batch

    def preempt_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-step: the step still completes
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_batch", preempt_at_step_4)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "preempted"
    with pytest.raises(TrainingStopped, match=r"stopped by SIGTERM after step 4; checkpoint saved") as info:
        train(_cfg(out, steps=50, save_every=50, val_episodes=0), progress=False)
    assert info.value.step == 4 and signal.getsignal(signal.SIGTERM) == before  # handlers restored
    meta = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]
    assert meta["training"]["steps_done"] == 4
    monkeypatch.setattr(loop, "_train_batch", real)
    train(_cfg(out, steps=6, save_every=50, val_episodes=0, resume=True), progress=False)
    assert json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]["steps_done"] == 6


def test_a_stopped_and_resumed_run_ends_with_the_weights_of_a_run_never_stopped(tmp_path, monkeypatch):
    """A preempted run resumed goes on with the batches, augmentation and noise the run would have drawn had it
    not been stopped (stopped mid-epoch, two epochs to go): before, the resumed run began a new epoch order. The
    weighted order (balance=tasks) is the same sampler's: tests/train/test_training_data.py."""
    import signal

    from safetensors.numpy import load_file

    from rfm.train import loop

    cfg = {"steps": 24, "save_every": 50, "val_episodes": 1, "state_noise": 0.01}  # 10 batches an epoch
    whole = tmp_path / "whole"
    train(_cfg(whole, **cfg), progress=False)

    calls = {"n": 0}
    real = loop._train_batch

    def preempt_at_step_7(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(loop, "_train_batch", preempt_at_step_7)
    parts = tmp_path / "parts"
    with pytest.raises(loop.TrainingStopped):
        train(_cfg(parts, **cfg), progress=False)
    state = json.loads((parts / "checkpoint" / "training_state" / "state.json").read_text())
    assert state["data_position"] == {"epoch": 0, "drawn": 56}  # 7 batches of 8: where any resume goes on from
    monkeypatch.setattr(loop, "_train_batch", real)
    train(_cfg(parts, **cfg, resume=True), progress=False)

    a, b = (load_file(str(run / "checkpoint" / "model.safetensors")) for run in (whole, parts))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst == 0.0, f"resumed weights differ from the unstopped run's by {worst}"


def test_a_second_run_into_an_out_a_running_one_writes_is_refused(tmp_path):
    """Two runs into one --out would interleave their logs and replace each other's checkpoints."""
    from rfm.train.run_lock import run_lock
    from tests.cli_in_process import rfm

    out = tmp_path / "run"
    with run_lock(out):  # a run in progress (this process holding it counts as another run)
        proc = rfm("train", "--dataset", str(FIXTURE), "--out", str(out), "--preset", "tiny", "--steps", "1")
        assert proc.returncode == 2 and "another rfm train is writing this run (pid " in proc.stderr
        assert {p.name for p in out.iterdir()} == {".rfm-train.lock"}
    train(_cfg(out, steps=2, save_every=2, val_episodes=0), progress=False)  # free once that run has ended
    assert (out / "checkpoint" / "config.json").is_file()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the run's processes in /proc")
def test_sigterm_to_every_process_of_the_run_still_saves_the_step(tmp_path):
    """SLURM's scancel and `pkill -f "rfm train"` signal the DataLoader workers too: they keep loading (only the
    training process's own SIGTERM ends them), so the step is finished and saved instead of the run crashing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rfm.cli.main", "train", "--dataset", str(FIXTURE), "--preset",
                             "tiny", "--image-size", "48", "48", "--batch-size", "4", "--num-workers", "2", "--steps",
                             "5000", "--save-every", "5000", "--log-every", "1", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = out / "logs" / "train.csv"
        deadline = time.time() + 120
        while not (log.exists() and len(log.read_text().splitlines()) > 3):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(workers) >= 2
        for pid in [proc.pid, *map(int, workers)]:
            os.kill(pid, signal.SIGTERM)
        text = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "DataLoader worker" not in text, text[-3000:]
    done = json.loads((out / "checkpoint" / "config.json").read_text())["meta"]["training"]["steps_done"]
    assert f"stopped by SIGTERM after step {done}; checkpoint saved" in text
