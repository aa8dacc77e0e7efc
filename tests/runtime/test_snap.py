"""Instruction snapping: a close paraphrase runs as the trained instruction, anything else passes unchanged; torch,
ONNX and the server all do it the same way."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.runtime import load_runner
from rfm.runtime.snap import InstructionSnapper, sentence_embeddings
from tests.conftest import random_obs

ITF = RobotInterface(cameras=["front", "wrist"], image_size=(64, 64), state_names=["x", "y", "z"],
                     action_names=["vx", "vy"], chunk_size=8)
TRAINED = ["open the drawer", "close the window", "press the button from above"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    policy = RFMPolicy.build("tiny", interface=ITF)
    policy.meta["data"] = {"tasks": TRAINED}  # what `rfm train` records
    return policy.save_pretrained(tmp_path_factory.mktemp("snap") / "ck")


def test_sentence_embeddings_are_masked_means_of_unit_length():
    feats = np.array([[[0.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)  # mean of the first two: (1.5, 2)
    mask = np.array([[True, True, False]])
    np.testing.assert_allclose(sentence_embeddings(feats, mask), [[0.6, 0.8]], atol=1e-6)


def test_paraphrases_snap_unrelated_requests_pass(checkpoint, rng):
    runner = load_runner(checkpoint, device="cpu")
    assert runner.trained_instructions == TRAINED and runner.describe()["snap_instructions"] is None
    snapper = runner.snap_instructions(0.5)
    assert snapper(["pull the drawer out", "shut the window", "make me a coffee", "open the drawer"]) == [
        "open the drawer", "close the window", "make me a coffee", "open the drawer"]
    m = snapper.match("make me a coffee")
    assert not m.snapped and m.similarity < 0.5 and m.nearest in TRAINED
    assert snapper.match("open the drawer").similarity == 1.0
    obs = random_obs(ITF, rng, "pull the drawer out")
    np.testing.assert_array_equal(runner.predict(obs), runner.predict({**obs, "instruction": "open the drawer"}))
    assert runner.describe()["snap_instructions"] == {"threshold": 0.5, "trained_instructions": TRAINED}


def test_a_model_that_records_no_instructions_cannot_snap(tmp_path):
    path = RFMPolicy.build("tiny", interface=ITF).save_pretrained(tmp_path / "ck")
    with pytest.raises(ValueError, match="records none"):
        load_runner(path, device="cpu").snap_instructions(0.5)
    with pytest.raises(ValueError, match="threshold=2: a cosine similarity"):
        InstructionSnapper(TRAINED, lambda t: (np.ones((len(t), 2, 4), np.float32), np.ones((len(t), 2), bool)), 2)


def test_onnx_exports_carry_the_trained_instructions(checkpoint, tmp_path, rng):
    from rfm.export import ExportConfig, export_checkpoint

    manifest = export_checkpoint(checkpoint, tmp_path / "export", ExportConfig(exporter="torchscript",
                                                                              parity_samples=2))
    assert manifest["trained_instructions"] == TRAINED
    runner = load_runner(tmp_path / "export", backend="onnx")
    runner.snap_instructions(0.5)
    obs = random_obs(ITF, rng, "hit the button from the top")
    np.testing.assert_array_equal(runner.predict(obs),
                                  runner.predict({**obs, "instruction": "press the button from above"}))


@pytest.mark.integration
def test_server_snaps_when_configured_and_audits_what_ran(checkpoint, rng, tmp_path):
    import json

    from serving.config import ServerConfig
    from serving.server import ServerThread
    from tests.serving.helpers import json_body

    obs = random_obs(ITF, rng, "shut the window")
    audit = tmp_path / "audit.jsonl"
    cfg = ServerConfig(max_batch=2, warmup_batch_sizes=(1,), snap_instructions=0.5, audit_log=str(audit))
    with ServerThread(load_runner(checkpoint, device="cpu"), cfg) as s:
        info = httpx.get(s.url + "/v1/models", timeout=30).json()
        paraphrased = httpx.post(s.url + "/v1/act", json=json_body(obs, request_id="para"), timeout=30)
        trained = httpx.post(s.url + "/v1/act", json=json_body({**obs, "instruction": "close the window"}),
                             timeout=30)
    assert paraphrased.status_code == trained.status_code == 200, paraphrased.text
    assert paraphrased.json()["actions"] == trained.json()["actions"]
    assert info["snap_instructions"]["threshold"] == 0.5
    record = next(json.loads(line) for line in audit.read_text().splitlines() if '"para"' in line)
    assert record["instruction"] == "shut the window" and record["instruction_run"] == "close the window"
