"""rfm export --precision int8: the per-block error report (which quantised layers cost the accuracy) and
--keep-fp32 (leave blocks in float). Real exports of the tiny chunk checkpoint, small sample counts.
"""

from __future__ import annotations

import contextlib
import io
import json

import onnx
import pytest

from rfm import RFMPolicy
from rfm.cli.main import main
from rfm.export import ExportConfig, export_checkpoint
from rfm.export.int8_report import group_blocks, module_paths, resolve_keep_fp32
from tests.export.test_export import checkpoints  # noqa: F401 - the tiny checkpoints fixture

SMALL = ["--calib-samples", "4", "--parity-samples", "3", "--no-text-encoder", "--instructions", "push"]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report_export(checkpoints, tmp_path_factory):  # noqa: F811 - the imported fixture
    """(export dir, export.json, stdout) of an int8 export with the per-block report."""
    out = tmp_path_factory.mktemp("int8") / "report"
    rc, stdout, stderr = _cli(["export", "--checkpoint", str(checkpoints["chunk"]), "--out", str(out),
                               "--precision", "int8", "--int8-report", "always", *SMALL])
    assert rc == 0, stderr
    return out, json.loads((out / "export.json").read_text()), stdout


def _dq_fed(model: onnx.ModelProto, names: list[str]) -> int:
    """How many inputs of the named nodes come from a DequantizeLinear (i.e. run as int8)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(i in dq for n in model.graph.node if n.name in names for i in n.input)


def test_report_names_real_blocks_sorted_by_cost(report_export, checkpoints):  # noqa: F811
    _, m, stdout = report_export
    pb = m["quantization"]["per_block"]
    rows = pb["blocks"]
    assert pb["metric"] == "mean_abs_error_pct_of_range_max" and len(rows) >= 5
    assert abs(pb["int8_error"] - m["parity"]["mean_abs_error_pct_of_range_max"]) < 1e-3  # same graph, same unit
    costs = [r["error_alone"] for r in rows]
    assert costs == sorted(costs, reverse=True) and costs[-1] >= 0
    modules = {name for name, _ in RFMPolicy.from_pretrained(checkpoints["chunk"]).net.named_modules()}
    assert all(r["block"] in modules and r["nodes"] >= 1 for r in rows), [r["block"] for r in rows]
    assert {"vision.stem", "encoder.0", "decoder.1", "action_out"} <= {r["block"] for r in rows}
    for r in rows[:5]:  # the costliest: what keeping each in float buys
        assert abs(r["gain"] - (pb["int8_error"] - r["error_if_fp32"])) < 1e-6
    assert all(r["gain"] is None for r in rows[5:])
    assert "int8 error by block" in stdout and rows[0]["block"] in stdout
    model_float = RFMPolicy.from_pretrained(checkpoints["chunk"]).net.int8_float_modules()
    assert sorted(m["quantization"]["keep_fp32"]) == sorted(model_float)  # by default what the model marks
    assert not {r["block"] for r in rows} & set(model_float)  # already float: not in the report


def test_keep_fp32_removes_the_blocks_qdq_and_keeps_parity(report_export, checkpoints, tmp_path):  # noqa: F811
    out, m, _ = report_export
    top = m["quantization"]["per_block"]["blocks"][0]
    model_float = sorted(m["quantization"]["keep_fp32"])  # the report's graph keeps these float already
    kept = export_checkpoint(checkpoints["chunk"], tmp_path / "kept", ExportConfig(
        precision="int8", calib_samples=4, parity_samples=3, text_encoder=False, instructions=["push"],
        keep_fp32=[top["block"], *model_float], int8_report="off"))
    entry = kept["quantization"]["keep_fp32"][top["block"]]
    assert entry["blocks"] == [top["block"]] and len(entry["nodes"]) == top["nodes"]
    assert _dq_fed(onnx.load(str(out / "policy.onnx")), entry["nodes"]) > 0
    assert _dq_fed(onnx.load(str(tmp_path / "kept" / "policy.onnx")), entry["nodes"]) == 0
    err = kept["parity"]["mean_abs_error_pct_of_range_max"]
    assert err <= m["parity"]["mean_abs_error_pct_of_range_max"] + 0.02  # within noise, if not better
    assert err == pytest.approx(top["error_if_fp32"], abs=0.02)  # the report predicted it
    assert kept["quantization"]["per_block"] is None
    assert kept["export_config"]["keep_fp32"] == [top["block"], *model_float]


def test_keep_fp32_errors_are_one_line_naming_the_field(checkpoints, tmp_path):  # noqa: F811
    rc, _, stderr = _cli(["export", "--checkpoint", str(checkpoints["chunk"]), "--out", str(tmp_path / "y"),
                          "--keep-fp32", "encoder.0", *SMALL])
    assert rc == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert "keep_fp32=['encoder.0']: only an int8 export" in stderr


def test_blocks_from_torchscript_names_and_globs():
    """TorchScript node names carry the module path too; entries match blocks, path prefixes and globs."""
    model = onnx.ModelProto()
    for name in ["/net/vision/stem/stem.0/Conv", "/net/encoder.0/mlp/mlp.0/MatMul", "/net/encoder.0/attn/q/MatMul",
                 "/net/action_out/Gemm", "Cast_3"]:
        model.graph.node.add(name=name, op_type="MatMul")
    paths = module_paths(model)
    assert paths["/net/encoder.0/mlp/mlp.0/MatMul"] == "encoder.0.mlp.0" and "Cast_3" not in paths
    blocks = group_blocks(paths, [n.name for n in model.graph.node], max_nodes=1)
    assert list(blocks) == ["vision", "encoder.0.mlp", "encoder.0.attn", "action_out", "(graph)"]
    kept = resolve_keep_fp32(["encoder.0", "*Gemm", "(graph)"], blocks, paths)
    assert kept == {"encoder.0": ["/net/encoder.0/mlp/mlp.0/MatMul", "/net/encoder.0/attn/q/MatMul"],
                    "*Gemm": ["/net/action_out/Gemm"], "(graph)": ["Cast_3"]}
    with pytest.raises(ValueError, match="Did you mean 'action_out'"):
        resolve_keep_fp32(["action_ou"], blocks, paths)


def test_unknown_block_names_the_field_and_the_known_blocks(report_export):
    """With the block names of a real export (one stand-in node each): the message lists them all."""
    _, m, _ = report_export
    blocks = {r["block"]: [f"node_{i}"] for i, r in enumerate(m["quantization"]["per_block"]["blocks"])}
    paths = {n[0]: b for b, n in blocks.items()}
    with pytest.raises(ValueError) as e:
        resolve_keep_fp32(["encoder.9"], blocks, paths)
    msg = str(e.value)
    assert msg.startswith("keep_fp32 'encoder.9' (--keep-fp32): matches no quantised node. Did you mean 'encoder.")
    assert "Known blocks: " in msg and all(b in msg for b in blocks)
