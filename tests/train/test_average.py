"""`rfm average`: parameters are the weighted mean, buffers must agree, sources are named, mismatches are one-line
errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rfm import RFMPolicy
from rfm.train.average import average_checkpoints, parse_weights
from tests.cli_in_process import rfm

STATS = {"observation.state": {"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]},
         "action": {"mean": [1.0, 2.0], "std": [0.5, 0.25]}}


def _checkpoint(path, interface, seed, stats=STATS, preset="tiny"):
    torch.manual_seed(seed)
    policy = RFMPolicy.build(preset, interface=interface, stats=stats)
    policy.meta["evaluation"] = {"success_rate": 0.5}
    policy.save_pretrained(path)
    return path


def test_parameters_are_the_weighted_mean_and_buffers_are_copied(tmp_path, small_interface):
    a = _checkpoint(tmp_path / "a", small_interface, seed=0)
    b = _checkpoint(tmp_path / "b", small_interface, seed=1)
    soup = average_checkpoints([a, b], [0.25, 0.75])
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    got = soup.net.state_dict()
    params = dict(soup.net.named_parameters())
    assert params, "the policy has parameters"
    for name in params:
        torch.testing.assert_close(got[name], 0.25 * wa[name] + 0.75 * wb[name])
    assert sum(not torch.equal(wa[n], wb[n]) for n in params) > len(params) // 2, "the two seeds differ"
    torch.testing.assert_close(got["action_norm.offset"], wa["action_norm.offset"])


@pytest.mark.integration
def test_cli_writes_a_loadable_checkpoint_naming_its_sources(tmp_path, small_interface):
    a = _checkpoint(tmp_path / "a", small_interface, seed=0)
    b = _checkpoint(tmp_path / "b", small_interface, seed=1)
    out = rfm("average", str(a), str(b), "--out", str(tmp_path / "soup"))
    assert out.returncode == 0, out.stderr
    assert "0.5 x" in out.stdout and str(tmp_path / "soup") in out.stdout
    soup = RFMPolicy.from_pretrained(tmp_path / "soup")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    name = next(n for n, _ in soup.net.named_parameters() if not torch.equal(wa[n], wb[n]))
    torch.testing.assert_close(soup.net.state_dict()[name], (wa[name] + wb[name]) / 2)
    config = json.loads((tmp_path / "soup" / "config.json").read_text())
    sources = config["meta"]["lineage"][0]["average_of"]
    assert [s["path"] for s in sources] == [str(a), str(b)] and [s["weight"] for s in sources] == [0.5, 0.5]
    assert sources[0]["model_version"] == json.loads((a / "config.json").read_text())["meta"]["model_version"]
    assert "evaluation" not in config["meta"], "the sources' success rates do not describe the average"
    assert config["meta"]["model_id"] == "soup"
    assert "average_of" in (tmp_path / "soup" / "README.md").read_text()


def test_averaging_a_checkpoint_with_itself_changes_nothing(tmp_path, small_interface):
    a = _checkpoint(tmp_path / "a", small_interface, seed=0)
    soup = average_checkpoints([a, a], parse_weights("3,1", 2))
    ref = RFMPolicy.from_pretrained(a).net.state_dict()
    for name, value in soup.net.state_dict().items():
        torch.testing.assert_close(value, ref[name])


def test_different_normalisation_is_refused_with_the_remedy(tmp_path, small_interface):
    a = _checkpoint(tmp_path / "a", small_interface, seed=0)
    other = {**STATS, "action": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    b = _checkpoint(tmp_path / "b", small_interface, seed=1, stats=other)
    with pytest.raises(ValueError, match=r"b/model.safetensors: buffer 'action_norm\.\w+' differs.*--keep-init-stats"):
        average_checkpoints([a, b])


def test_one_robot_written_two_ways_still_averages(tmp_path, small_interface):
    """A calibration rounded to 6 decimals by one checkpoint and kept at float32 by the other, and native sizes
    spelled out by one and left to the image size by the other, describe the same robot."""
    from dataclasses import replace

    proj = [[1.7071069478988647, -1.7071069478988647, 0.0, 1.1949750185012817], [0.0, -2.4142138957977295, 0.0, 1.2],
            [0.0, 0.0, -1.0, 1.5]]
    cal = {cam: {"projection": proj} for cam in small_interface.cameras}
    a = _checkpoint(tmp_path / "a", replace(small_interface, calibration=cal), seed=0)
    rounded = {cam: {"projection": [[round(v, 6) for v in row] for row in proj]} for cam in small_interface.cameras}
    native = {cam: small_interface.image_size for cam in small_interface.cameras}
    b = _checkpoint(tmp_path / "b", replace(small_interface, calibration=rounded, native_sizes=native), seed=1)
    average_checkpoints([a, b])
    moved = {cam: {"projection": [[v + 0.01 for v in row] for row in proj]} for cam in small_interface.cameras}
    c = _checkpoint(tmp_path / "c", replace(small_interface, calibration=moved), seed=1)
    with pytest.raises(ValueError, match=r"c/config.json: interface.calibration="):
        average_checkpoints([a, c])


@pytest.mark.integration
def test_different_architectures_are_one_line_cli_errors(tmp_path, small_interface):
    from dataclasses import replace

    a = _checkpoint(tmp_path / "a", small_interface, seed=0)
    b = _checkpoint(tmp_path / "b", replace(small_interface, chunk_size=4), seed=1)
    out = rfm("average", str(a), str(b), "--out", str(tmp_path / "soup"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "b/config.json: interface.chunk_size=4" in out.stderr and "has 8" in out.stderr
    assert not (tmp_path / "soup").exists()
    out = rfm("average", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "soup"))
    assert out.returncode == 2 and "missing: checkpoint directory not found" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text, message", [("1", "1 values for 2 checkpoints"), ("a,b", "comma-separated numbers"),
                                           ("0,0", "positive sum"), ("-1,2", ">= 0")])
def test_bad_weights_say_what_was_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(text, 2)
    assert parse_weights("1,3", 2) == [0.25, 0.75]
