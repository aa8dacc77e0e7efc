"""`rfm train --config FILE`: YAML/JSON configs, flags and --set over them, and a run's train_config.json reproducing it."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from rfm.cli.errors import CLIError
from rfm.cli.main import build_parser, main
from rfm.cli.train import config_from_args
from rfm.config import ConfigError
from rfm.train.config import TrainConfig

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "lerobot-v3.0" / "image"
if not FIXTURE.exists():
    FIXTURE = Path("/work/shared/fixtures/lerobot-v3.0/image")


def _cfg(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_yaml_config_then_flags_then_set(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("dataset: data/a\nout: runs/a\nsteps: 100\nlr: 0.001\nbatch_size: 16\n"
                 "aids:\n  keypoints: {weight: 2.0}\ninterface:\n  aspect: pad\n")
    cfg = _cfg("--config", str(f), "--steps", "7", "--set", "aids.keypoints.weight=0.5", "--set", "clip_grad=0.3",
               "--weight-decay", "0.01", "--vision-lr-scale", "0.1")
    assert (cfg.dataset, cfg.out, cfg.lr, cfg.batch_size) == ("data/a", "runs/a", 0.001, 16)  # from the file
    assert cfg.steps == 7 and cfg.weight_decay == 0.01 and cfg.vision_lr_scale == 0.1  # flags win over it
    assert cfg.aids == {"keypoints": {"weight": 0.5}} and cfg.clip_grad == 0.3  # --set wins over both
    assert cfg.interface == {"aspect": "pad"}
    assert _cfg("--dataset", "d", "--out", "o").steps == TrainConfig(dataset="d", out="o").steps  # defaults stay


def test_every_train_config_field_is_reachable_from_a_file(tmp_path):
    everything = TrainConfig(dataset="d", out="o").to_dict()
    f = tmp_path / "all.json"
    f.write_text(json.dumps(everything))
    assert _cfg("--config", str(f)).to_dict() == everything
    assert set(everything) == {fl.name for fl in fields(TrainConfig)}


@pytest.mark.parametrize("text, suffix, pattern", [
    ("steps: [1", ".yaml", r"bad\.yaml: not valid YAML"),
    ('{"dataset": "d", "out": "o", "stpes": 3}', ".json", r"unknown field 'stpes'\. Did you mean 'steps'"),
    ('{"dataset": "d"}', ".json", "give --dataset and --out"),
    ('["d"]', ".json", "expected a mapping"),
    ('{"dataset": "d", "out": "o", "interface": {"calibraton": {}}}', ".json", "Did you mean 'calibration'"),
])
def test_bad_config_files_name_the_file_and_field(tmp_path, text, suffix, pattern):
    f = tmp_path / f"bad{suffix}"
    f.write_text(text)
    with pytest.raises((ConfigError, CLIError), match=pattern):
        _cfg("--config", str(f))
    with pytest.raises(CLIError, match="--set 'steps': expected FIELD=VALUE"):
        _cfg("--dataset", "d", "--out", "o", "--set", "steps")
    with pytest.raises(CLIError, match="--set 'model.dim=64': unknown field 'model'. Did you mean 'model_overrides'"):
        _cfg("--dataset", "d", "--out", "o", "--set", "model.dim=64")


def test_an_older_rfms_train_config_and_flags_say_what_replaced_them(tmp_path, capsys, caplog):
    """A run's train_config.json written before the training aids were split out held scene_shift, env_state_loss
    and keypoint_loss: it was refused ('Did you mean shift_pad?', another option). They are read as the aids they
    became; the old flags are errors naming the field that replaced them."""
    caplog.set_level("WARNING", logger="rfm.train")  # whatever level an earlier test left the root logger at
    f = tmp_path / "train_config.json"
    f.write_text(json.dumps({"dataset": "d", "out": "o", "scene_shift": 0.05, "env_state_loss": 0.0,
                             "keypoint_loss": 2.0, "aids": {"keypoints": {"sigma": 1.5}}}))
    cfg = _cfg("--config", str(f))
    assert cfg.aids == {"scene_shift": {"metres": 0.05}, "keypoints": {"sigma": 1.5, "weight": 2.0}}
    assert "'scene_shift' (an older rfm's) is now aids.scene_shift.metres" in caplog.text
    assert "env_state_loss" not in caplog.text  # 0 was off: nothing to say
    for flag, field in (("--shift-pad", "shift_pad"), ("--keypoint-loss", "aids.keypoints.weight")):
        with pytest.raises(SystemExit):
            _cfg("--dataset", "d", "--out", "o", flag, "2")
        assert f"{flag} is no longer a flag: it is the config field {field} (--set {field}=2" in capsys.readouterr().err


def test_research_knobs_stay_out_of_the_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--config" in text and "--set" in text
    for knob in ("--keypoint-loss", "--env-state-loss", "--scene-shift", "--relabel-action", "RESULTS"):
        assert knob not in text


def test_a_runs_train_config_json_reproduces_it(tmp_path):
    first = tmp_path / "first"
    assert main(["train", "--dataset", str(FIXTURE), "--out", str(first), "--preset", "tiny", "--steps", "3",
                 "--batch-size", "4", "--chunk-size", "4", "--image-size", "32", "32", "--num-workers", "0",
                 "--warmup-steps", "0", "--log-every", "1", "--seed", "3", "--no-progress"]) == 0
    written = json.loads((first / "train_config.json").read_text())
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "train_config.json"), "--out", str(again), "--no-progress"]) == 0
    assert {**written, "out": str(again)} == json.loads((again / "train_config.json").read_text())
    # same config, same seed: the same losses, step by step
    assert (first / "logs" / "train.csv").read_text().splitlines()[1].split(",")[:2] == \
        (again / "logs" / "train.csv").read_text().splitlines()[1].split(",")[:2]


@pytest.mark.parametrize("argv, pattern", [
    (["--set", "lr=fast"], r"train\.lr='fast' is invalid: expected a number"),
    (["--set", "steps=2.5"], r"train\.steps=2\.5 is invalid: expected an integer"),
    (["--set", "augment=1"], r"train\.augment=1 is invalid: expected true or false"),
    (["--num-workers", "-1"], r"train\.num_workers=-1 is invalid: expected a number >= 0"),
    (["--frame-cache-gb", "-1"], r"train\.frame_cache_gb=-1\.0 is invalid: expected a positive number"),
    (["--model", '{"dropuot": 0.1}', "--init", "checkpoints/default"],
     r"unknown train\.model_overrides field 'dropuot'\. Did you mean 'dropout'"),
])
def test_a_value_of_the_wrong_type_or_a_misspelled_model_field_names_the_field(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _cfg("--dataset", "d", "--out", "o", *argv)


def test_numbers_yaml_reads_as_strings_are_taken_as_numbers(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("dataset: d\nout: o\nlr: 3e-4\nsteps: 100\nema_decay: 0\n")  # YAML 1.1: 3e-4 is a string
    cfg = _cfg("--config", str(f))
    assert (cfg.lr, cfg.steps, cfg.ema_decay) == (3e-4, 100, 0.0) and isinstance(cfg.ema_decay, float)
