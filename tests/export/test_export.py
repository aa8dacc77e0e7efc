"""rfm export: ONNX graphs that match PyTorch, int8 QDQ graphs that run, an export.json that describes them.

Each export runs once per module (fixtures); the fp32 chunk export goes through the `rfm export` CLI.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.export import ExportConfig, export_checkpoint, read_manifest
from rfm.runtime import TorchRunner
from rfm.runtime.onnx_runner import OnnxRunner
from tests.conftest import random_obs

ITF = RobotInterface(
    cameras=["a", "b"],
    image_size=(64, 64),
    state_names=["x", "y", "z"],
    action_names=["vx", "vy"],
    chunk_size=8,
    robot_type="test",
)
STATS = {
    "observation.state": {
        "mean": [0.5, -1.0, 2.0],
        "std": [2.0, 0.5, 1.0],
        "min": [-5, -3, -1],
        "max": [5, 1, 4],
    },
    "action": {"mean": [0.1, -0.2], "std": [0.3, 2.0], "min": [-1.0, -6.0], "max": [1.0, 5.0]},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    torch.manual_seed(0)  # same weights whichever tests ran before: parity bounds are checked on fixed models
    for head in ("chunk", "flow"):
        policy = RFMPolicy.build("tiny", interface=ITF, head=head, stats=STATS)
        out[head] = policy.save_pretrained(root / f"tiny-{head}")
    return out


@pytest.fixture(scope="module")
def cli_export(checkpoints, tmp_path_factory):
    """fp32 chunk export through the CLI: (export dir, stdout)."""
    import contextlib
    import io

    from rfm.cli.main import main

    out = tmp_path_factory.mktemp("exp") / "chunk-fp32"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "export",
                "--checkpoint",
                str(checkpoints["chunk"]),
                "--out",
                str(out),
                "--precision",
                "fp32",
                "--parity-samples",
                "6",
                "--instructions",
                "push the block,open the drawer",
            ]
        )
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def exports(checkpoints, cli_export, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exp")
    flow = export_checkpoint(
        checkpoints["flow"],
        root / "flow-fp32",
        ExportConfig(
            parity_samples=6,
            text_encoder=False,
            instructions=["pick up the cube", "push the block", "open the drawer"],
        ),
    )
    assert flow["precision"] == "fp32"
    return {"chunk": cli_export[0], "flow": root / "flow-fp32"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A real LeRobot v3.0 dataset with the policy's cameras and dims: 2 episodes x 20 frames."""
    from rfm.data.lerobot import LeRobotDatasetWriter

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data") / "ds"
    w = LeRobotDatasetWriter(
        root,
        fps=10,
        cameras={"a": (64, 64), "b": (64, 64)},
        state_names=ITF.state_names,
        action_names=ITF.action_names,
    )
    for task in ("push the block", "open the drawer"):
        for _ in range(20):
            w.add_frame(
                images={c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in ("a", "b")},
                state=rng.standard_normal(3).astype(np.float32),
                action=rng.standard_normal(2).astype(np.float32),
                task=task,
            )
        w.save_episode()
    w.finalize()
    return root


@pytest.fixture(scope="module")
def int8_export(checkpoints, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "chunk-int8"
    export_checkpoint(
        checkpoints["chunk"],
        out,
        ExportConfig(
            precision="int8",
            calib_dataset=str(dataset),
            calib_samples=16,
            parity_samples=6,
            text_encoder=False,
            instructions=["pick up the cube", "push the block", "open the drawer"],
        ),
    )
    return out


def _normalised_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.asarray(STATS["action"]["std"], np.float32)


@pytest.mark.parametrize("head", ["chunk", "flow"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_onnx_matches_pytorch(exports, checkpoints, head, batch):
    rng = np.random.default_rng(batch)
    obs = [random_obs(ITF, rng, t) for t in ("pick up the cube", "push the block", "open the drawer")[:batch]]
    noise = rng.standard_normal((batch, ITF.chunk_size, ITF.action_dim)).astype(np.float32)
    torch_out = TorchRunner.from_checkpoint(checkpoints[head], device="cpu").predict(obs, noise=noise)
    onnx_out = OnnxRunner.from_dir(exports[head]).predict(obs, noise=noise)
    assert onnx_out.shape == (batch, ITF.chunk_size, ITF.action_dim) and onnx_out.dtype == np.float32
    assert _normalised_error(onnx_out, torch_out).max() <= 1e-4


@pytest.mark.parametrize("head", ["chunk", "flow"])
def test_policy_graph_is_valid_with_dynamic_batch(exports, head):
    model = onnx.load(str(exports[head] / "policy.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i for i in model.graph.input}
    expected = ["images", "state", "text", "text_mask"] + (["noise"] if head == "flow" else [])
    assert list(inputs) == expected
    for vi in [*model.graph.input, *model.graph.output]:
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch", vi.name
    assert inputs["images"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inputs["text_mask"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # NPUs reject bool inputs


def test_export_json_has_the_promised_keys(exports):
    m = read_manifest(exports["flow"])
    for key in (
        "inputs",
        "outputs",
        "interface",
        "model_id",
        "model_version",
        "precision",
        "target",
        "parity",
        "head",
        "opset",
        "text",
    ):
        assert key in m, key
    assert [i["name"] for i in m["inputs"]] == ["images", "state", "text", "text_mask", "noise"]
    assert m["prefix_max"] == 0 and "samples_with_committed_actions" not in m["parity"]  # takes no committed actions
    assert m["inputs"][0] == {"name": "images", "shape": ["batch", 2, 3, 64, 64], "dtype": "uint8"}
    assert m["outputs"] == [{"name": "actions", "shape": ["batch", 8, 2], "dtype": "float32"}]
    assert (
        m["interface"]["cameras"] == ["a", "b"]
        and m["model_id"] == "tiny-flow"
        and len(m["model_version"]) == 12
    )
    p = m["parity"]
    for key in (
        "max_abs_error",
        "mean_abs_error",
        "cosine_similarity_mean",
        "mean_abs_error_pct_of_range",
        "batch_sizes",
    ):
        assert key in p, key
    assert p["max_abs_error"] <= 1e-4 and p["goal"]["met"] and p["batch_sizes"] == [1, 3, 6]
    assert p["range_source"].startswith("checkpoint stats") and p["source"] == "synthetic"
    assert m["text"]["graph"] is None and m["text"]["instructions"]["count"] == 3
    chunk = read_manifest(exports["chunk"])
    assert (
        chunk["text"]["graph"] == "text_encoder.onnx" and chunk["parity"]["text_encoder_max_abs_error"] < 1e-4
    )
    assert [i["name"] for i in chunk["text"]["io"]["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]


def test_an_export_from_before_prefix_max_still_loads(exports, tmp_path, rng):
    """export.json without prefix_max (older rfm): a model without committed actions, which are refused."""
    import shutil

    from rfm.runtime.observation import ObservationError

    old = tmp_path / "old"
    shutil.copytree(exports["flow"], old)
    m = json.loads((old / "export.json").read_text())
    del m["prefix_max"]
    (old / "export.json").write_text(json.dumps(m))
    runner = OnnxRunner.from_dir(old)
    assert runner.prefix_max == 0 and runner.describe()["prefix_max"] == 0
    obs = random_obs(ITF, rng, "push the block")
    noise = rng.standard_normal((ITF.chunk_size, ITF.action_dim)).astype(np.float32)
    np.testing.assert_array_equal(runner.predict(obs, noise=noise), OnnxRunner.from_dir(exports["flow"]).predict(
        obs, noise=noise))
    with pytest.raises(ObservationError, match="takes no committed actions"):
        runner.predict({**obs, "committed_actions": [[0.1, 0.2]]})


def test_a_truncated_or_missing_export_file_is_named_before_it_is_parsed(exports, tmp_path):
    """export.json records every file's size and sha256; loading checks the sizes (a stat each)."""
    import hashlib
    import shutil

    m = read_manifest(exports["chunk"])
    policy = m["files"]["policy.onnx"]
    data = (exports["chunk"] / "policy.onnx").read_bytes()
    assert policy == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {"text_encoder.onnx", "tokenizer.json", "instructions.npz"} <= set(m["files"])
    cut = tmp_path / "cut"
    shutil.copytree(exports["chunk"], cut)
    (cut / "policy.onnx").write_bytes(data[:5000])
    with pytest.raises(ValueError, match=rf"policy.onnx: 5000 bytes, export.json records {len(data)}: truncated"):
        OnnxRunner.from_dir(cut)
    (cut / "policy.onnx").write_bytes(data)
    (cut / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json: missing \(export.json lists it"):
        read_manifest(cut)


def test_cli_writes_the_artefacts_and_prints_parity(cli_export):
    out, stdout = cli_export
    names = {p.name for p in out.iterdir()}
    assert {"policy.onnx", "text_encoder.onnx", "export.json", "tokenizer.json", "instructions.npz"} <= names
    assert "parity vs PyTorch (fp32" in stdout and "max |err|" in stdout and "goal max_abs_error" in stdout
    assert json.loads((out / "export.json").read_text())["parity"]["max_abs_error"] <= 1e-4


def test_text_encoder_onnx_matches_torch(exports):
    from rfm.model.policy import shared_text_encoder

    texts = ["Pick UP the red block!", "push", "open the drawer " * 12, "", "héllo wörld"]
    te = shared_text_encoder("all-MiniLM-L6-v2", 24)
    runner = OnnxRunner.from_dir(exports["chunk"])
    ref_tok, tok = te.tokenize(texts), runner.text.tokenize(texts)
    for k in ref_tok:
        np.testing.assert_array_equal(tok[k], ref_tok[k])
    ref_f, ref_m = te._encode_uncached(texts)
    feats, mask = runner.encode_text(texts)
    np.testing.assert_allclose(feats, ref_f, atol=1e-4)
    np.testing.assert_array_equal(mask, ref_m)


def test_the_exported_tokenizer_feeds_the_text_graph_as_is(exports):
    """A vendor runtime reads tokenizer.json with `tokenizers` and runs text_encoder.onnx: the file padded to 128
    tokens, which the graph (24) refused."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    enc = Tokenizer.from_file(str(exports["chunk"] / "tokenizer.json")).encode_batch(["push", "open the drawer " * 12])
    feed = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc]}
    sess = ort.InferenceSession(str(exports["chunk"] / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {k: np.asarray(v, np.int64) for k, v in feed.items()})[0]
    ref, _ = OnnxRunner.from_dir(exports["chunk"]).encode_text(["push", "open the drawer " * 12])
    mask = np.asarray(feed["attention_mask"], bool)
    assert feats.shape == ref.shape and mask.shape == (2, 24)
    np.testing.assert_allclose(feats[mask], ref[mask], atol=1e-5)


def test_int8_is_a_qdq_graph_that_runs(int8_export, dataset, rng):
    model = onnx.load(str(int8_export / "policy.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    m = read_manifest(int8_export)
    q = m["quantization"]
    assert q["quantized_ops"].get("Conv", 0) > 0 and q["quantized_ops"].get("MatMul", 0) > 0
    assert "LayerNormalization" not in q["quantized_ops"] and "Softmax" not in q["quantized_ops"]
    assert q["calibration"] == {"source": "dataset", "dataset": str(dataset), "samples": 16}
    assert m["parity"]["source"] == "dataset" and m["parity"]["samples"] == 6
    assert m["parity"]["cosine_similarity_mean"] > 0.99
    runner = OnnxRunner.from_dir(int8_export)
    out = runner.predict([random_obs(ITF, rng, "push the block")] * 2)
    assert out.shape == (2, 8, 2) and np.all(np.isfinite(out))


def test_instruction_table_without_text_encoder(int8_export, rng):
    runner = OnnxRunner.from_dir(int8_export)
    assert not (int8_export / "text_encoder.onnx").exists()
    runner.predict(random_obs(ITF, rng, "pick up the cube"))
    with pytest.raises(ValueError, match="not in this export's instruction table"):
        runner.predict(random_obs(ITF, rng, "dance"))


def test_qnn_target_quantises_the_whole_graph_to_16_bit_but_the_masked_softmax(checkpoints, tmp_path):
    m = export_checkpoint(
        checkpoints["chunk"],
        tmp_path / "qnn",
        ExportConfig(
            precision="int8",
            target="qnn",
            calib_samples=4,
            parity_samples=3,
            text_encoder=False,
            instructions=["push"],
        ),
    )
    q = m["quantization"]
    assert q["activation_type"] == "QUInt16" and q["calibration"]["source"] == "synthetic"
    assert {"LayerNormalization", "Softmax", "Conv", "MatMul"} <= set(q["quantized_ops"])
    model = onnx.load(str(tmp_path / "qnn" / "policy.onnx"))
    zero_points = [i for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert any(z.data_type == onnx.TensorProto.UINT16 for z in zero_points)
    assert m["parity"]["cosine_similarity_mean"] > 0.99
    assert m["opset"] == 21 == next(o.version for o in model.opset_import if o.domain == "")  # 16-bit Q/DQ needs 21
    # but the attention softmax and the masked scores it takes (-inf where masked: no range) stay float
    producer = {o: n for n in model.graph.node for o in n.output}
    attention = [n for n in model.graph.node if n.op_type == "Softmax" and producer[n.input[0]].op_type == "Add"]
    assert attention and all(producer[i].op_type != "DequantizeLinear" for n in attention for i in n.input)


def test_fp16_parity(checkpoints, tmp_path):
    m = export_checkpoint(
        checkpoints["flow"],
        tmp_path / "fp16",
        ExportConfig(precision="fp16", parity_samples=4, text_encoder=False, instructions=["push"]),
    )
    model = onnx.load(str(tmp_path / "fp16" / "policy.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert [i["dtype"] for i in m["inputs"]] == ["uint8", "float32", "float32", "float32", "float32"]
    assert m["parity"]["max_abs_error"] <= 1e-2


def test_export_refuses_to_replace_a_foreign_directory(checkpoints, tmp_path):
    (tmp_path / "keep.txt").write_text("not an export")
    with pytest.raises(ValueError, match="not an rfm export directory"):
        export_checkpoint(checkpoints["chunk"], tmp_path, ExportConfig())
    with pytest.raises(ValueError, match="is the checkpoint directory itself"):
        export_checkpoint(checkpoints["chunk"], checkpoints["chunk"], ExportConfig())


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"precision": "int4"}, r"precision='int4': expected one of"),
        ({"target": "qnnn"}, r"target='qnnn'.*Did you mean 'qnn'"),
        ({"opset": 13}, r"opset=13: expected >= 17"),
    ],
)
def test_bad_export_config(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExportConfig(**kw)


@pytest.mark.parametrize("relative", [pytest.param(False, marks=pytest.mark.slow), True])
def test_triangulated_points_export_with_parity(tmp_path, relative):
    """The point token's closed-form 3 x 3 solve (and its points relative to the hand) runs in ONNX as it does in
    PyTorch, in fp32 and fp16. With relative points the graph holds the plain point token too, so the plain variant
    runs only with -m slow."""
    from tests.model.test_triangulate import STEREO

    torch.manual_seed(0)
    itf = replace(ITF, calibration={c: {"projection": p.tolist()} for c, p in zip(ITF.cameras, STEREO)},
                  ee_position=ITF.state_names[:3])
    policy = RFMPolicy.build("tiny", interface=itf, stats=STATS, vision_points=3, relative_points=relative)
    if relative:  # the branch starts at zero; give it weights so that parity covers it
        torch.nn.init.normal_(policy.net.point_token.relative[2].weight, std=0.05)
    ckpt = policy.save_pretrained(tmp_path / "pts")
    for precision, limit in (("fp32", 1e-4), ("fp16", 1e-2)):
        m = export_checkpoint(ckpt, tmp_path / precision, ExportConfig(precision=precision, parity_samples=4,
                                                                       text_encoder=False, instructions=["push"]))
        assert m["parity"]["max_abs_error"] <= limit, precision
    # int8 leaves what the model marks as needing float (keypoint heatmaps, the point token, the image features'
    # projection) unquantised
    m = export_checkpoint(ckpt, tmp_path / "int8", ExportConfig(precision="int8", calib_samples=8, parity_samples=4,
                                                                text_encoder=False, instructions=["push"],
                                                                int8_report="off"))
    q = m["quantization"]
    assert q["keep_fp32_source"] == "model"
    assert set(q["keep_fp32"]) == set(policy.net.int8_float_modules()) == {"vision.keypoints", "point_token",
                                                                            "img_proj"}
    graph = onnx.load(str(tmp_path / "int8" / "policy.onnx")).graph
    inits = {i.name for i in graph.initializer}
    int8_weights = {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits for o in n.output}
    kept = {n for entry in q["keep_fp32"].values() for n in entry["nodes"]}
    assert kept and not [n.name for n in graph.node if n.name in kept and any(i in int8_weights for i in n.input)]
    assert [n for n in graph.node if n.op_type == "DequantizeLinear"]  # the rest is int8
