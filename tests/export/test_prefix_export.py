"""Delay-aware continuation through the export: a model with prefix_max > 0 exports with prefix / prefix_len inputs,
its calibration and parity samples carry committed actions, and OnnxRunner / OpenVinoRunner answer as TorchRunner
does, the chunk starting with the committed actions, in batches mixing rows with and without them.

One tiny chunk-head checkpoint (prefix_max 4, its prefix weights randomised so the prefix changes the answer), one
fp32 export with the OpenVINO IR (onnxruntime and OpenVINO from one directory), one int8 export.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from rfm import RFMPolicy
from rfm.constants import COMMITTED
from rfm.export import ExportConfig, export_checkpoint, read_manifest
from rfm.export.samples import committed_lengths, dataset_samples, synthetic_observations
from rfm.runtime import TorchRunner
from rfm.runtime.observation import ObservationError
from rfm.runtime.onnx_runner import OnnxRunner
from rfm.runtime.openvino_runner import OpenVinoRunner
from tests.conftest import random_obs
from tests.export.test_export import ITF, STATS, dataset  # noqa: F401 - the LeRobot dataset fixture

PREFIX_MAX = 4
INSTRUCTIONS = ["pick up the cube", "push the block"]
COMMITTED_3 = [[0.5, -0.25], [0.1, 2.0], [-0.3, 0.3]]


@pytest.fixture(scope="module")
def prefix_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=ITF, head="chunk", stats=STATS, prefix_max=PREFIX_MAX)
    with torch.no_grad():  # zero-initialised by design (fine-tuning starts as it was): make the prefix matter
        torch.nn.init.normal_(policy.net.prefix_in.weight, std=0.5)
        torch.nn.init.normal_(policy.net.prefix_embed, std=0.5)
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny-prefix")


@pytest.fixture(scope="module")
def prefix_export(prefix_checkpoint, tmp_path_factory):
    """fp32, dynamo (the exporter `rfm serve` uses), with the OpenVINO IR beside policy.onnx."""
    out = tmp_path_factory.mktemp("exp") / "prefix-fp32"
    export_checkpoint(prefix_checkpoint, out, ExportConfig(target="openvino", parity_samples=6, text_encoder=False,
                                                           instructions=INSTRUCTIONS))
    return out


def _mixed_batch() -> list[dict]:
    rng = np.random.default_rng(7)
    obs = [random_obs(ITF, rng, t) for t in INSTRUCTIONS]
    obs[0][COMMITTED] = COMMITTED_3  # row 0 commits 3 actions, row 1 none
    return obs


def _normalised(a: np.ndarray) -> np.ndarray:
    return a / np.asarray(STATS["action"]["std"], np.float32)


def test_the_graph_takes_committed_actions_and_export_json_says_how_many(prefix_export):
    model = onnx.load(str(prefix_export / "policy.onnx"))
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["images", "state", "text", "text_mask", "prefix", "prefix_len"]
    assert inputs["prefix"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["prefix_len"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_param or d.dim_value for d in inputs["prefix"].shape.dim] == ["batch", PREFIX_MAX, 2]
    assert [d.dim_param or d.dim_value for d in inputs["prefix_len"].shape.dim] == ["batch"]
    m = read_manifest(prefix_export)
    assert m["prefix_max"] == PREFIX_MAX
    assert m["inputs"][-1] == {"name": "prefix_len", "shape": ["batch"], "dtype": "int64"}
    for parity in (m["parity"], m["parity_onnxruntime"]):  # OpenVINO, then onnxruntime: both with prefixes
        assert parity["goal"]["met"] and parity["max_abs_error"] <= 1e-4
        assert 0 < parity["samples_with_committed_actions"] < parity["samples"] == 6  # a mix, in every batch size
    assert m["parity"]["runtime"].startswith("openvino")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_runners_match_pytorch_on_a_batch_mixing_committed_and_none(prefix_export, prefix_checkpoint, backend):
    torch_runner = TorchRunner.from_checkpoint(prefix_checkpoint, device="cpu")
    runner = (OnnxRunner if backend == "onnx" else OpenVinoRunner).from_dir(prefix_export)
    assert runner.prefix_max == torch_runner.prefix_max == PREFIX_MAX
    assert runner.describe()["prefix_max"] == PREFIX_MAX
    obs = _mixed_batch()
    ref, out = torch_runner.predict(obs), runner.predict(obs)
    assert out.shape == (2, ITF.chunk_size, ITF.action_dim) and out.dtype == np.float32
    assert _normalised(np.abs(out - ref)).max() <= 1e-4
    np.testing.assert_allclose(out[0, :3], COMMITTED_3, atol=1e-6)  # the chunk starts with the committed actions
    alone = runner.predict(obs[1])  # the row without committed actions is answered as if it ran alone
    np.testing.assert_allclose(out[1], alone, atol=1e-5)
    free = runner.predict({k: v for k, v in obs[0].items() if k != COMMITTED})
    assert np.abs(free[3:] - out[0, 3:]).max() > 1e-3  # the continuation depends on what was committed
    full = runner.predict({**obs[0], COMMITTED: np.tile([[0.2, -0.1]], (PREFIX_MAX, 1))})  # prefix_max of them
    np.testing.assert_allclose(full[:PREFIX_MAX], np.tile([[0.2, -0.1]], (PREFIX_MAX, 1)), atol=1e-6)
    with pytest.raises(ObservationError, match=r"has 5 actions, this model takes at most 4"):
        runner.predict({**obs[0], COMMITTED: np.zeros((5, 2))})
    with pytest.raises(ObservationError, match=r"has shape \(2, 3\), expected \(P, 2\)"):
        runner.predict({**obs[0], COMMITTED: np.zeros((2, 3))})


def test_an_export_json_that_disagrees_with_the_graph_is_a_clear_error(prefix_export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(prefix_export, bad)
    m = json.loads((bad / "export.json").read_text())
    (bad / "export.json").write_text(json.dumps({**m, "prefix_max": 0}))
    with pytest.raises(ValueError, match="prefix_max=0 but the policy graph has the prefix / prefix_len inputs"):
        OnnxRunner.from_dir(bad)


def test_int8_calibrates_and_checks_parity_with_committed_actions(prefix_checkpoint, tmp_path):
    m = export_checkpoint(prefix_checkpoint, tmp_path / "int8", ExportConfig(
        precision="int8", calib_samples=8, parity_samples=6, text_encoder=False, instructions=INSTRUCTIONS))
    assert m["prefix_max"] == PREFIX_MAX and m["parity"]["goal"]["met"]
    assert m["parity"]["samples_with_committed_actions"] == 4 and m["parity"]["cosine_similarity_mean"] > 0.99
    model = onnx.load(str(tmp_path / "int8" / "policy.onnx"))
    assert [i.name for i in model.graph.input][-2:] == ["prefix", "prefix_len"]
    assert "QuantizeLinear" in _ops_downstream(model, "prefix", 4)  # the prefix projection was calibrated, int8
    out = OnnxRunner.from_dir(tmp_path / "int8").predict(_mixed_batch())
    np.testing.assert_allclose(out[0, :3], COMMITTED_3, atol=1e-6)  # exact whatever the precision


def _ops_downstream(model: onnx.ModelProto, name: str, hops: int) -> set[str]:
    """Op types of the nodes within `hops` nodes of graph value `name`."""
    ops, frontier = set(), {name}
    for _ in range(hops):
        nodes = [n for n in model.graph.node if frontier & set(n.input)]
        ops |= {n.op_type for n in nodes}
        frontier = {o for n in nodes for o in n.output}
    return ops


def test_calibration_samples_commit_a_mix_of_lengths():
    lens = committed_lengths(12, PREFIX_MAX, seed=1)
    assert list(lens[2::3]) == [0] * 4 and all(1 <= p <= PREFIX_MAX for i, p in enumerate(lens) if i % 3 != 2)
    np.testing.assert_array_equal(lens, committed_lengths(12, PREFIX_MAX, seed=1))  # deterministic
    plain = synthetic_observations(ITF, 6, STATS, seed=3)
    with_prefix = synthetic_observations(ITF, 6, STATS, seed=3, prefix_max=PREFIX_MAX)
    for a, b, p in zip(plain, with_prefix, committed_lengths(6, PREFIX_MAX, seed=3)):
        np.testing.assert_array_equal(a["state"], b["state"])  # the observations themselves do not change
        assert (COMMITTED in b) == bool(p) and COMMITTED not in a
        if p:
            assert b[COMMITTED].shape == (p, ITF.action_dim) and b[COMMITTED].dtype == np.float32


def test_dataset_samples_commit_the_ground_truth_actions_that_follow(dataset):  # noqa: F811
    from rfm.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(dataset)
    s = dataset_samples(dataset, 8, 6, ITF, prefix_max=PREFIX_MAX)
    frames = s.calibration + s.held_out
    assert sum(COMMITTED in f for f in frames) == 10  # all but every third of each set
    for f in frames:
        if COMMITTED not in f:
            continue
        i = int(np.flatnonzero((ds.states == f["state"]).all(1))[0])  # the frame this observation is
        p = len(f[COMMITTED])
        assert 1 <= p <= PREFIX_MAX and i + p <= ds.frame_episode(i).stop  # never past the episode's end
        np.testing.assert_array_equal(f[COMMITTED], ds.actions[i : i + p])


def test_the_rknn_preparation_feeds_a_continuation_model_float32_only(prefix_export, tmp_path):
    """tools/rknn_check.py feeds every input as float32 (the toolkit's inputs): prefix_len is cast back inside the
    graph, so the prepared graph answers as policy.onnx does, with and without committed actions."""
    import importlib.util

    import onnxruntime as ort

    spec = importlib.util.spec_from_file_location("rknn_check", "tools/rknn_check.py")
    rknn_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rknn_check)
    prepared = rknn_check.prepare_onnx(prefix_export, tmp_path / "prepared.onnx")
    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    assert {i.name: i.type for i in session.get_inputs()}["prefix_len"] == "tensor(float)"
    reference = ort.InferenceSession(str(prefix_export / "policy.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feeds = {}
    for i in reference.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in i.shape]
        kind = i.type[len("tensor("):-1]
        feeds[i.name] = (rng.integers(0, 255, shape).astype(np.uint8) if kind == "uint8" else
                         np.ones(shape, np.float32) if i.name == "text_mask" else
                         rng.normal(size=shape).astype(np.float32) if kind == "float" else np.zeros(shape, np.int64))
    answers = []
    for committed in (0, 3):
        feeds["prefix_len"] = np.full(feeds["prefix_len"].shape, committed, np.int64)
        want = reference.run(["actions"], feeds)[0]
        got = session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4)
        answers.append(want)
    assert np.abs(answers[0] - answers[1]).max() > 1e-3  # the committed actions reached the graph
