"""Config validation: errors name the field and value; typos get a 'did you mean'."""

from __future__ import annotations

import json

import pytest

from rfm.config import ConfigError, ModelConfig, PolicyConfig, RobotInterface, preset


def test_mistyped_preset_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown preset 'smal'.*Did you mean 'small'"):
        preset("smal")


def test_mistyped_override_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown model field 'hed'.*Did you mean 'head'"):
        preset("tiny", hed="flow")


@pytest.mark.parametrize("kw,pattern", [
    ({"head": "diffusion"}, r"model.head='diffusion' is invalid"),
    ({"head": "flwo"}, r"Did you mean 'flow'"),
    ({"dim": 100, "heads": 8}, r"model.dim=100 is invalid: expected an integer >= 16 divisible by model.heads=8"),
    ({"flow_steps": 0}, r"model.flow_steps=0"),
    ({"dropout": 1.5}, r"model.dropout=1.5"),
    ({"norm_mode": "zscore"}, r"model.norm_mode='zscore'"),
    ({"vision_backbone": "hf"}, r"model.vision_path=None is invalid"),
])
def test_model_config_errors_name_field_and_value(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ModelConfig(**kw)


@pytest.mark.parametrize("kw,pattern", [
    ({"cameras": []}, r"interface.cameras=\[\]"),
    ({"cameras": ["a", "a"]}, r"unique names"),
    ({"image_size": (4, 4)}, r"interface.image_size=\(4, 4\)"),
    ({"chunk_size": 0}, r"interface.chunk_size=0"),
    ({"control_hz": -1}, r"interface.control_hz=-1"),
])
def test_interface_errors_name_field_and_value(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        RobotInterface(**kw)


def test_policy_config_round_trips_through_json():
    cfg = PolicyConfig(model=preset("small", head="flow"),
                       interface=RobotInterface(cameras=["c1", "c2"], image_size=(96, 128), chunk_size=12))
    again = PolicyConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert again.interface.image_size == (96, 128)


def test_unknown_config_key_is_rejected_with_suggestion():
    d = PolicyConfig().to_dict()
    d["interface"]["camreas"] = ["x"]
    with pytest.raises(ConfigError, match=r"unknown field interface.camreas.*Did you mean 'cameras'"):
        PolicyConfig.from_dict(d)


def test_a_value_of_the_wrong_type_names_the_field():
    """A hand-edited config.json (`"dim": "big"`, `"cameras": "a,b"`) is an error naming the field, not a failed
    comparison; a number written as a string is taken as that number."""
    from rfm.config import ConfigError, ModelConfig, RobotInterface

    with pytest.raises(ConfigError, match=r"model\.dim='big' is invalid: expected an integer"):
        ModelConfig(dim="big")
    with pytest.raises(ConfigError, match=r"model\.heads=None is invalid: expected an integer"):
        ModelConfig(heads=None)
    with pytest.raises(ConfigError, match=r"interface\.cameras='a,b' is invalid: expected a list"):
        RobotInterface(cameras="a,b")
    assert ModelConfig(dim="128").dim == 128 and RobotInterface(control_hz=50).control_hz == 50.0
    with pytest.raises(ConfigError, match=r"interface\.image_size=128 is invalid: expected \(H, W\)"):
        RobotInterface(image_size=128)
    with pytest.raises(ConfigError, match=r"interface\.cameras=\[1, 2\] is invalid: expected a list of names"):
        RobotInterface(cameras=[1, 2])


def test_a_train_config_takes_paths():
    from pathlib import Path

    from rfm.train.config import TrainConfig

    cfg = TrainConfig(dataset=Path("data/a"), out=Path("runs/a"), init=Path("checkpoints/default"))
    assert (cfg.datasets, cfg.out, cfg.init) == (["data/a"], "runs/a", "checkpoints/default")


def test_a_preset_is_built_for_its_resolution():
    from rfm import RFMPolicy

    assert RFMPolicy.build("tiny").interface.image_size == (128, 128)
    assert RFMPolicy.build("base").interface.image_size == (224, 224)  # as rfm train --preset base
