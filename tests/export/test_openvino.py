"""rfm export --target openvino: an OpenVINO IR beside policy.onnx that matches PyTorch on the OpenVINO runtime, and
OpenVinoRunner behind the Runner interface (same actions as OnnxRunner). Real openvino, real files.

One fp32 export (flow head, through the CLI, TorchScript exporter: the fast path) serves every test here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from rfm.cli.main import main
from rfm.export import ExportConfig, export_checkpoint, read_manifest
from rfm.export.openvino_ir import OpenVinoConversionError, convert
from rfm.install import source
from rfm.runtime import TorchRunner, load_runner
from rfm.runtime.onnx_runner import OnnxRunner
from rfm.runtime.openvino_runner import OpenVinoRunner
from tests.conftest import random_obs
from tests.export.test_export import ITF, STATS, checkpoints  # noqa: F401 - the tiny checkpoints fixture

INSTRUCTIONS = ["pick up the cube", "push the block"]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ov_export(checkpoints, tmp_path_factory):  # noqa: F811 - the imported fixture
    """(export dir, stdout) of `rfm export --target openvino`, fp32, flow head."""
    out = tmp_path_factory.mktemp("ov") / "flow-openvino"
    rc, stdout, stderr = _cli(["export", "--checkpoint", str(checkpoints["flow"]), "--out", str(out),
                               "--target", "openvino", "--exporter", "torchscript", "--parity-samples", "4",
                               "--no-text-encoder", "--instructions", ",".join(INSTRUCTIONS)])
    assert rc == 0, stderr
    return out, stdout


def _obs_and_noise(batch: int):
    rng = np.random.default_rng(batch)
    obs = [random_obs(ITF, rng, INSTRUCTIONS[i % 2]) for i in range(batch)]
    return obs, rng.standard_normal((batch, ITF.chunk_size, ITF.action_dim)).astype(np.float32)


def test_export_writes_the_ir_and_measures_parity_on_openvino(ov_export):
    out, stdout = ov_export
    names = {p.name for p in out.iterdir()}
    assert {"policy.onnx", "policy.xml", "policy.bin", "export.json"} <= names
    m = read_manifest(out)
    ov = m["openvino"]
    assert ov["model"] == "policy.xml" and ov["weights"] == "policy.bin" and ov["source"] == "policy.onnx"
    assert ov["runtime"].startswith("openvino 20") and ov["version"].startswith(ov["runtime"].split()[1])
    assert m["parity"]["runtime"] == ov["runtime"] and m["parity"]["max_abs_error"] <= 1e-4
    assert m["parity"]["goal"]["met"] and m["parity"]["batch_sizes"] == [1, 3, 4]
    assert m["parity_onnxruntime"]["runtime"].startswith("onnxruntime ")
    assert f"OpenVINO IR: policy.xml + policy.bin ({ov['runtime']}" in stdout
    assert f"parity vs PyTorch (fp32 on {ov['runtime']}" in stdout


def test_openvino_runner_matches_pytorch(ov_export, checkpoints):  # noqa: F811
    obs, noise = _obs_and_noise(3)
    ref = TorchRunner.from_checkpoint(checkpoints["flow"], device="cpu").predict(obs, noise=noise)
    out = OpenVinoRunner.from_dir(ov_export[0]).predict(obs, noise=noise)
    assert out.shape == (3, ITF.chunk_size, ITF.action_dim) and out.dtype == np.float32
    assert (np.abs(out - ref) / np.asarray(STATS["action"]["std"], np.float32)).max() <= 1e-4


def test_openvino_runner_matches_onnx_runner(ov_export):
    ov_runner = load_runner(ov_export[0], backend="openvino", seed=0)
    onnx_runner = OnnxRunner.from_dir(ov_export[0], seed=0)
    assert isinstance(ov_runner, OpenVinoRunner)
    for batch in (1, 2):
        obs, noise = _obs_and_noise(batch)
        np.testing.assert_allclose(ov_runner.predict(obs, noise=noise), onnx_runner.predict(obs, noise=noise),
                                   atol=1e-5)
    assert ov_runner.predict(obs[0], noise=noise[0]).shape == (ITF.chunk_size, ITF.action_dim)
    d, ref = ov_runner.describe(), onnx_runner.describe()
    assert d["backend"] == "openvino" and d["device"] == "CPU" and d["runtime"].startswith("openvino ")
    for key in ("cameras", "action_names", "chunk_size", "model_id", "model_version", "head", "precision"):
        assert d[key] == ref[key], key
    with pytest.raises(ValueError, match="not in this export's instruction table"):
        ov_runner.predict(random_obs(ITF, np.random.default_rng(0), "dance"))


def test_an_export_without_ir_is_a_clear_error(ov_export, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(ov_export[0], plain)
    m = json.loads((plain / "export.json").read_text())
    (plain / "export.json").write_text(json.dumps({**m, "openvino": None}))
    with pytest.raises(ValueError, match="lists no OpenVINO IR; export with `rfm export --target openvino`"):
        load_runner(plain, backend="openvino")
    (plain / "policy.bin").unlink()
    (plain / "export.json").write_text(json.dumps(m))
    with pytest.raises(FileNotFoundError, match="policy.bin: missing"):
        OpenVinoRunner.from_dir(plain)


def test_rfm_serve_runs_an_openvino_export_on_openvino_unless_told_otherwise(ov_export, tmp_path):
    """`rfm serve` on an export: its target picks the runtime, --engine onnx|openvino overrides it, and an engine
    the export cannot give (another precision, a missing IR, PyTorch) is a one-line error before anything starts."""
    from rfm.cli.serve import export_backend

    out = ov_export[0]
    assert [export_backend(out, None, e) for e in ("auto", "onnx", "openvino")] == ["openvino", "onnx", "openvino"]
    assert export_backend(out, "onnx", "auto") == "onnx"
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    m = json.loads((plain / "export.json").read_text())
    (plain / "export.json").write_text(json.dumps({**m, "openvino": None, "target": "cpu"}))
    assert export_backend(plain, None, "auto") == "onnx"
    for export, args, message in [
            (plain, ["--engine", "openvino"], "--engine openvino: .* has no OpenVINO IR .*`rfm export --target openvino`"),
            (out, ["--engine", "onnx-int8"], "is a fp32 export; int8 is chosen when exporting"),
            (out, ["--engine", "torch"], "is an `rfm export` directory .* serve the checkpoint it came from"),
            (out, ["--backend", "onnx", "--engine", "openvino"], "--backend onnx and --engine openvino disagree")]:
        rc, _, err = _cli(["serve", "--checkpoint", str(export), *args])
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), err
    # and it serves: `rfm serve` on the export, default flags, answers on OpenVINO
    from rfm.client import RFMClient
    from serving.server import free_port
    from tests.serving.helpers import wait_until_ready
    from tests.serving.test_cli_serve import RFM

    port = free_port()
    proc = subprocess.Popen([*RFM, "serve", "--checkpoint", str(out), "--port", str(port), "--threads", "1",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, url)
        with RFMClient(url) as client:
            assert client.models()["backend"] == "openvino"
            chunk = client.act(random_obs(ITF, np.random.default_rng(0), INSTRUCTIONS[0]))
        assert chunk.shape == (ITF.chunk_size, ITF.action_dim) and np.isfinite(chunk).all()
    finally:
        proc.terminate()
        proc.wait(30)


def test_unknown_target_is_a_cli_error(checkpoints, tmp_path):  # noqa: F811
    rc, _, err = _cli(["export", "--checkpoint", str(checkpoints["chunk"]), "--out", str(tmp_path / "x"),
                       "--target", "openvinoo"])
    assert rc == 2 and "invalid choice: 'openvinoo'" in err and "openvino" in err
    rc, _, err = _cli(["eval", "--checkpoint", str(tmp_path), "--backend", "openvinoo"])
    assert rc == 2 and "invalid choice: 'openvinoo'" in err


def test_missing_openvino_names_the_extra(checkpoints, ov_export, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install '\S+\[export\]'"):
        export_checkpoint(checkpoints["chunk"], tmp_path / "x", ExportConfig(target="openvino"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ModuleNotFoundError, match=r"openvino package.*pip install '\S+\[export\]'"):
        OpenVinoRunner.from_dir(ov_export[0])
    rc, _, err = _cli(["export", "--checkpoint", str(checkpoints["chunk"]), "--out", str(tmp_path / "y"),
                       "--target", "openvino"])
    assert rc == 2 and f"pip install '{source()}[export]'" in err


def test_an_op_openvino_cannot_convert_is_named_with_the_fix(tmp_path):
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Frobnicate", ["r"], ["y"], domain="com.example")]
    model = oh.make_model(oh.make_graph(nodes, "g", [x], [y]),
                          opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(OpenVinoConversionError, match=r"cannot convert op\(s\) com\.example\.Frobnicate\. Fix: "
                                                     r"express them with standard ONNX ops"):
        convert(tmp_path / "bad.onnx")


@pytest.mark.slow
def test_int8_ir_runs_the_qdq_graph_within_the_goal(checkpoints, tmp_path):  # noqa: F811
    m = export_checkpoint(checkpoints["chunk"], tmp_path / "int8", ExportConfig(
        precision="int8", target="openvino", calib_samples=8, parity_samples=4,
        text_encoder=False, instructions=INSTRUCTIONS))
    assert m["parity"]["runtime"].startswith("openvino") and m["parity"]["goal"]["met"]
    assert m["parity"]["cosine_similarity_mean"] > 0.99 and m["quantization"]["target"] == "openvino"
    obs, _ = _obs_and_noise(2)
    out = OpenVinoRunner.from_dir(tmp_path / "int8").predict(obs)
    np.testing.assert_allclose(out, OnnxRunner.from_dir(tmp_path / "int8").predict(obs), atol=0.05)


@pytest.mark.integration
def test_openvino_runner_runs_without_torch(ov_export):
    code = (
        "import sys; from rfm.runtime.loader import load_runner; "
        f"r = load_runner({str(ov_export[0])!r}, backend='openvino'); out = r.predict(r.dummy_observation()); "
        "assert out.shape == (8, 2), out.shape; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
