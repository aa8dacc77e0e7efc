"""OpenVINO IR of an export (`rfm export --target openvino`): policy.xml + policy.bin beside policy.onnx.

The IR is policy.onnx converted as it is (`openvino.convert_model` + `openvino.save_model`, weights kept at the
graph's precision), so the ONNX file and the IR are one model at every precision:
    fp32  the float graph.
    fp16  the float16 graph (OpenVINO's CPU plugin computes in fp32 under rfm's f32 hint; GPU/NPU in fp16).
    int8  the QDQ graph rfm.export.quantize writes for the openvino target, calibrated on the export's samples:
          OpenVINO reads QuantizeLinear/DequantizeLinear pairs as FakeQuantize and runs int8 kernels.
Why QDQ and not NNCF post-training quantisation of the fp32 IR on the same calibration samples: measured once on
this 2-core CPU (128 px, 2 cameras, 32 synthetic calibration frames, 8 held-out, batch 1), they ran at the same
speed within the machine's noise (tiny 14.0 vs 14.5 ms p50, small 34 vs 32 ms), both within the int8 parity goal
(max error in normalised units: QDQ 0.037 / 0.033, NNCF's transformer mode 0.017 / 0.011, its default mode 0.12;
the mixed preset 0.12 / 0.15). QDQ keeps one int8 model for onnxruntime and OpenVINO (the export's
parity_onnxruntime cross-checks the same graph), needs no second calibration pass, and adds nothing to the export
extra (NNCF brings scikit-learn, scipy, networkx).
"""

from __future__ import annotations

import re
from pathlib import Path

from rfm.runtime.manifest import OV_MODEL_FILE, OV_WEIGHTS_FILE
from rfm.runtime.openvino_runner import compile_config, graph_loader, import_openvino, openvino_version


class OpenVinoConversionError(ValueError):
    """An ONNX graph holds ops that OpenVINO cannot convert."""


def unconverted_ops(message: str) -> list[str]:
    """The op names in OpenVINO's conversion failure report ("... for operations: com.x.Op, Y-18")."""
    ops: list[str] = []
    for line in re.findall(r"(?:No conversion rule found for operations|Conversion is failed for):\s*(.+)",
                           message):
        ops += [op.strip() for op in line.split(",") if op.strip()]
    return list(dict.fromkeys(ops))


def convert(onnx_path: Path):
    """`openvino.convert_model` of an ONNX file; an op it cannot convert raises an error naming the op."""
    ov = import_openvino()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types (OpConversionFailure, ...)
        ops = unconverted_ops(str(e))
        what = f"op(s) {', '.join(ops)}" if ops else "the graph"
        raise OpenVinoConversionError(
            f"{onnx_path.name}: {openvino_version()} cannot convert {what}. Fix: express "
            f"{'them' if ops else 'it'} with standard ONNX ops in the policy (rfm.export.graph; the other "
            "--exporter or another --opset may already do), or export with --target cpu and run on onnxruntime. "
            f"OpenVINO said: {' '.join(str(e).split())[-600:]}"
        ) from None


def write_ir(onnx_path: Path, out_dir: Path) -> dict:
    """policy.xml + policy.bin in `out_dir` from `onnx_path`; returns export.json's "openvino" section."""
    import_openvino().save_model(convert(onnx_path), str(out_dir / OV_MODEL_FILE), compress_to_fp16=False)
    return {
        "model": OV_MODEL_FILE,
        "weights": OV_WEIGHTS_FILE,
        "source": onnx_path.name,
        "runtime": openvino_version(),
        "version": import_openvino().__version__,
        "compile_config_cpu": compile_config("CPU"),
    }


def load_ir(out_dir: Path, name: str = OV_MODEL_FILE):
    """A graph of `out_dir` (the IR, or an ONNX file) compiled on the CPU as OpenVinoRunner compiles it: a
    function feed -> first output."""
    return graph_loader("CPU")(out_dir / name)
