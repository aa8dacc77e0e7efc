"""Checkpoints: self-describing, atomic, never unpickled, and loud about corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.checkpoint import CheckpointError


def _pred(policy, itf, seed=0):
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (2, len(itf.cameras), 3, *itf.image_size), dtype=np.uint8)
    state = g.standard_normal((2, itf.state_dim)).astype(np.float32)
    noise = g.standard_normal((2, itf.chunk_size, itf.action_dim)).astype(np.float32)
    return policy.predict(images, state, ["stack the cups", "wipe the table"], noise=noise)


STATS = {"observation.state": {"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3], "min": [-1] * 3, "max": [1] * 3},
         "action": {"mean": [1.0, 2.0], "std": [0.5, 0.25], "min": [-1, -1], "max": [3, 3]}}


@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_save_load_gives_identical_outputs(tmp_path, small_interface, head):
    policy = RFMPolicy.build("tiny", interface=small_interface, head=head, stats=STATS)
    ref = _pred(policy, small_interface)
    policy.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "stats.json"]
    loaded = RFMPolicy.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(_pred(loaded, small_interface), ref)
    assert loaded.interface == small_interface
    assert loaded.stats["action"]["mean"] == [1.0, 2.0]
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["interface"]["cameras"] == ["front", "wrist"] and cfg["interface"]["state_dim"] == 3
    assert cfg["meta"]["model_version"] and cfg["model"]["head"] == head
    assert "front, wrist" in (tmp_path / "ckpt" / "README.md").read_text()


def test_a_saved_checkpoint_is_readable_by_other_users_as_the_umask_allows(tmp_path, small_interface):
    """A server running as another user (a container mounting the checkpoint) must be able to read it: the
    atomic save's temp directory (mkdtemp: 0700) gets the modes a plain mkdir and open would."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    RFMPolicy.build("tiny", interface=small_interface, stats=STATS).save_pretrained(tmp_path / "ckpt")
    for f in [tmp_path / "ckpt", *(tmp_path / "ckpt").iterdir()]:
        expected = (0o777 if f.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(f.stat().st_mode) == expected, f


def test_fp16_weights_halve_the_file_and_stay_close(tmp_path, small_interface):
    policy = RFMPolicy.build("tiny", interface=small_interface, stats=STATS)
    policy.save_pretrained(tmp_path / "fp32")
    policy.save_pretrained(tmp_path / "fp16", weights_dtype="float16")
    s32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    s16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert s16 < 0.55 * s32
    half = RFMPolicy.from_pretrained(tmp_path / "fp16")
    np.testing.assert_allclose(_pred(half, small_interface), _pred(policy, small_interface), atol=2e-2)


def test_crash_mid_save_leaves_previous_checkpoint_intact(tmp_path, small_interface, monkeypatch):
    import rfm.model.serialization as ck

    policy = RFMPolicy.build("tiny", interface=small_interface)
    path = tmp_path / "ckpt"
    policy.save_pretrained(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "model_card", boom)  # fails after the weights were written to the temp dir
    with pytest.raises(OSError, match="disk full"):
        RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind
    RFMPolicy.from_pretrained(path)


@pytest.fixture
def saved(tmp_path, small_interface):
    path = tmp_path / "ckpt"
    RFMPolicy.build("tiny", interface=small_interface).save_pretrained(path)
    return path


def test_saving_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path, small_interface):
    """save_pretrained / rfm average --out into a folder of the user's files: an error, the files untouched; a
    checkpoint or an empty directory is replaced as before."""
    policy = RFMPolicy.build("tiny", interface=small_interface)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"mine: exists and is not an rfm checkpoint"):
        policy.save_pretrained(mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "empty"):  # empty, then a checkpoint: both replaced
        policy.save_pretrained(target)
        assert (target / "config.json").is_file()


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        RFMPolicy.from_pretrained(tmp_path / "nope")


def test_an_export_or_a_dataset_passed_as_a_checkpoint_says_what_it_is(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "export.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"an `rfm export` directory \(export.json\), not a checkpoint"):
        RFMPolicy.from_pretrained(tmp_path / "export")
    (tmp_path / "data" / "meta").mkdir(parents=True)
    (tmp_path / "data" / "meta" / "info.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"a LeRobot dataset \(meta/info.json\), not a checkpoint"):
        RFMPolicy.from_pretrained(tmp_path / "data")


def test_missing_weights_file_is_named(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing"):
        RFMPolicy.from_pretrained(saved)


@pytest.mark.parametrize("keep", [10, 0.5, -100], ids=["inside the header", "half", "the last tensor's tail"])
def test_truncated_weights_file_is_named(saved, keep):
    """Also by check_checkpoint, which reads no tensors: what `rfm serve` checks before it starts."""
    from rfm.model.serialization import check_checkpoint

    w = saved / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or truncated"):
        check_checkpoint(saved)
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or truncated"):
        RFMPolicy.from_pretrained(saved)


def test_invalid_json_config_is_named(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not valid JSON"):
        RFMPolicy.from_pretrained(saved)


def test_config_that_does_not_match_weights_names_the_tensor(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["interface"]["action_names"] = ["a", "b", "c"]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'action_norm.offset' has shape \(2,\).*implies \(3,\)"):
        RFMPolicy.from_pretrained(saved)


def test_invalid_field_in_config_is_named(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model"]["head"] = "diffusion"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: model.head='diffusion' is invalid"):
        RFMPolicy.from_pretrained(saved)


def test_foreign_format_is_rejected(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["format"] = "something-else"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"format='something-else'"):
        RFMPolicy.from_pretrained(saved)


def test_weights_are_never_unpickled(saved):
    # a pickle disguised as the weights file must be rejected, not executed
    import pickle

    (saved / "model.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        RFMPolicy.from_pretrained(saved)


def test_the_same_weights_give_the_same_file_and_version_in_every_process(tmp_path, small_interface):
    """safetensors orders its metadata keys per process: the weights file, its sha256 and the model version were
    different for identical weights saved by two processes (and results tied to the file by sha256 refused)."""
    import subprocess
    import sys

    import torch

    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=small_interface, stats=STATS)
    policy.save_pretrained(tmp_path / "here")
    code = ("import sys, torch; from rfm import RFMPolicy; "
            "p = RFMPolicy.from_pretrained(sys.argv[1]); p.save_pretrained(sys.argv[2])")
    for i in range(2):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "here"), str(tmp_path / f"there{i}")], check=True)
        assert (tmp_path / f"there{i}" / "model.safetensors").read_bytes() == \
            (tmp_path / "here" / "model.safetensors").read_bytes()
    data = (tmp_path / "here" / "model.safetensors").read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_predict_names_a_nan_state_a_wrong_noise_and_takes_lists(small_interface):
    policy = RFMPolicy.build("tiny", interface=small_interface, head="flow", stats=STATS)
    images = np.zeros((1, len(small_interface.cameras), 3, *small_interface.image_size), np.uint8)
    with pytest.raises(ValueError, match="state: NaN or infinite values"):
        policy.predict(images, [[0.0, float("nan"), 0.0]], ["wipe the table"])
    with pytest.raises(ValueError, match=r"noise: expected \(1, \d+, 2\) .* got \(1, 3, 2\)"):
        policy.predict(images, [[0.0, 0.0, 0.0]], ["wipe the table"], noise=np.zeros((1, 3, 2)))
    assert policy.predict(images, [[0.0, 0.0, 0.0]], ["wipe the table"]).shape[0] == 1  # a list of lists is fine


def test_stats_that_do_not_fit_name_the_feature(small_interface):
    with pytest.raises(ValueError, match=r"stats\['action'\] has 4 values, the model expects 2"):
        RFMPolicy.build("tiny", interface=small_interface, stats={"action": {"mean": [0] * 4, "std": [1] * 4}})
    with pytest.raises(ValueError, match=r"stats\['action'\] has no 'std' \(model.norm_mode=mean_std"):
        RFMPolicy.build("tiny", interface=small_interface, stats={"action": {"mean": [0, 0]}})
