"""fp16 conversion and static int8 (QDQ) quantisation of policy.onnx, with per-target settings.

Targets differ in what their int8 kernels accept:
    cpu       u8 activations (asymmetric), s8 per-channel weights, QDQ around Conv/MatMul/Gemm (ORT fuses).
    openvino  8-bit QDQ around Conv/MatMul/Gemm only, symmetric per-channel weights (the NPU plugin folds).
    tensorrt  symmetric s8 activations and weights (zero point 0), per-channel weights, Conv/MatMul/Gemm.
    qnn       16-bit activations (u16), u8 weights, every op quantised (HTP runs integer-only graphs) but the
              attention softmax and the masked scores it takes (-inf has no range), via onnxruntime's QNN helper.
LayerNorm, Softmax, GroupNorm (InstanceNormalization) and the state/action (un)normalisation stay float on the
cpu/openvino/tensorrt targets: they are cheap, and quantising them costs accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

TARGETS = ("cpu", "qnn", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
FP16_KEEP_FLOAT = ["InstanceNormalization", "LayerNormalization", "Softmax", "Erf"]  # fp16 error hot spots


@dataclass(frozen=True)
class QuantSettings:
    """How one target wants its int8 graph."""

    target: str
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    weights_only_matmul: bool = True  # skip activation x activation MatMuls (attention scores / values)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        return d


QUANT_SETTINGS: dict[str, QuantSettings] = {
    "cpu": QuantSettings(
        "cpu", notes="ORT CPU: u8 activations, s8 per-channel weights, QDQ fused to QLinear ops"
    ),
    "openvino": QuantSettings(
        "openvino",
        activation_type="QUInt8",
        weight_type="QInt8",
        notes="OpenVINO NPU: 8-bit QDQ around Conv/MatMul only",
    ),
    "tensorrt": QuantSettings(
        "tensorrt",
        activation_type="QInt8",
        weight_type="QInt8",
        activation_symmetric=True,
        notes="TensorRT explicit quantisation: symmetric int8, zero point 0",
    ),
    "qnn": QuantSettings(
        "qnn",
        activation_type="QUInt16",
        weight_type="QUInt8",
        per_channel=False,
        weight_symmetric=False,
        op_types=(),
        weights_only_matmul=False,
        notes="QNN HTP: 16-bit activations, 8-bit weights, whole graph quantised but the masked attention softmax",
    ),
}


def to_fp16(src: str | Path, dst: str | Path) -> dict:
    """Convert weights and compute to float16, keeping float32 graph inputs/outputs and the ops in
    FP16_KEEP_FLOAT in float32 (casts are inserted around them)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from rfm.export.graph import save_model

    model = onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FLOAT))
    model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    _drop_duplicate_nodes(model16.graph)  # a shared weight read by two blocked ops gets two identical casts
    _topological_sort(model16.graph)  # the converter appends its input casts after their consumers
    onnx.checker.check_model(model16)
    save_model(model16, dst)
    return {"kept_float32_ops": FP16_KEEP_FLOAT, "io_types": "float32 (casts inside the graph)"}


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes) (in place)."""
    seen, keep = set(), []
    for n in graph.node:
        key = (
            n.SerializeToString(deterministic=True)
            if n.name == ""
            else (
                n.op_type,
                tuple(n.input),
                tuple(n.output),
                tuple(a.SerializeToString() for a in n.attribute),
            )
        )
        if key in seen:
            continue
        seen.add(key)
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (in place)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise ValueError(f"graph has a cycle or a dangling input near node {rest[0].name!r}")
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of feed dicts ({input name: array})."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of MatMul nodes with no constant input (attention QK^T and AV)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)
    ]


def _masked_softmax(model: onnx.ModelProto) -> list[str]:
    """Names of the Softmax nodes and of the Add nodes feeding them (scores plus the attention mask, -inf where a
    token is masked): a tensor holding -inf has no finite range, so quantising it ruins every attention row
    (on the default with the whole graph quantised: cosine 0.02 against PyTorch)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type == "Softmax":
            out.append(n.name)
            feed = producer.get(n.input[0])
            if feed is not None and feed.op_type == "Add":
                out.append(feed.name)
    return out


def _unshare_initializers(model: onnx.ModelProto, max_elements: int = 1 << 20) -> int:
    """Give each consumer its own copy of an initializer read by several nodes (the exporter deduplicates
    equal constants, e.g. zero biases); the quantiser fails on shared ones. In place; returns #copies."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            if i in inits:
                consumers.setdefault(i, []).append(n)
    copies = 0
    for name, nodes in consumers.items():
        if len(nodes) < 2 or int(np.prod(inits[name].dims, dtype=np.int64)) > max_elements:
            continue
        value = numpy_helper.to_array(inits[name])
        for k, node in enumerate(nodes[1:], start=1):
            new = f"{name}__copy{k}"
            model.graph.initializer.append(numpy_helper.from_array(value.copy(), new))
            node.input[:] = [new if i == name else i for i in node.input]
            copies += 1
    return copies


class Int8Quantizer:
    """Static QDQ quantisation of one fp32 graph, prepared once (pre-processing, calibration ranges) and run as
    often as needed with different nodes kept in float (`exclude`): the export and the per-block error report
    (rfm.export.int8_report) quantise the same graph with the same ranges. Use as a context manager."""

    def __init__(self, src: str | Path, feeds: list[dict[str, np.ndarray]], target: str = "cpu") -> None:
        import tempfile

        from onnxruntime.quantization import quant_pre_process

        if target not in QUANT_SETTINGS:
            raise ValueError(f"target={target!r}: expected one of {TARGETS}")
        if not feeds:
            raise ValueError("int8 quantisation needs at least one calibration sample")
        self.settings = QUANT_SETTINGS[target]
        self.reader = FeedReader(feeds)
        self._tmp = tempfile.TemporaryDirectory(prefix="rfm-int8-")
        self.workdir = Path(self._tmp.name)
        self.pre = self.workdir / "pre.onnx"
        self.calibration_cache = self.workdir / "calibration.json"  # ranges of the first run, reused after
        # Shape inference + graph cleanup first: onnxruntime's recommended input to the quantiser.
        quant_pre_process(str(src), str(self.pre), skip_symbolic_shape=False)
        model = onnx.load(str(self.pre))
        for i, n in enumerate(model.graph.node):  # the quantiser keys on node names; every node gets one
            if not n.name:
                n.name = f"{n.op_type}_{i}"
        _unshare_initializers(model)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if "16" in self.settings.activation_type and opset < 21:  # 16-bit Q/DQ needs opset 21: converted once here,
            model = onnx.version_converter.convert_version(model, 21)  # not by onnxruntime at every quantisation
        onnx.save_model(model, str(self.pre))
        s = self.settings
        # nodes never quantised on this target, and the nodes the quantiser may quantise (in graph order)
        self.always_float = _activation_matmuls(model) if s.weights_only_matmul else []
        if not s.op_types:  # a whole-graph quantisation (qnn) would quantise the masked attention scores too
            self.always_float += _masked_softmax(model)
        skip = set(self.always_float)
        self.candidates = [
            n.name
            for n in model.graph.node
            if n.name not in skip and (n.op_type in s.op_types if s.op_types else n.op_type not in _NEVER_QDQ)
        ]

    def __enter__(self) -> Int8Quantizer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def quantize(self, dst: str | Path, exclude: Iterable[str] = ()) -> dict:
        """Write the int8 graph to `dst` with the nodes in `exclude` left float; returns what was done."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, StaticQuantConfig

        s = self.settings
        exclude = list(dict.fromkeys([*self.always_float, *exclude]))
        self.reader.rewind()
        if s.target == "qnn":
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            config = get_qnn_qdq_config(
                str(self.pre),
                self.reader,
                activation_type=QuantType[s.activation_type],
                weight_type=QuantType[s.weight_type],
                per_channel=s.per_channel,
                nodes_to_exclude=exclude or None,
            )
        else:
            config = StaticQuantConfig(
                self.reader,
                calibrate_method=CalibrationMethod.MinMax,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType[s.activation_type],
                weight_type=QuantType[s.weight_type],
                op_types_to_quantize=list(s.op_types),
                nodes_to_exclude=exclude,
                per_channel=s.per_channel,
                extra_options={
                    "ActivationSymmetric": s.activation_symmetric,
                    "WeightSymmetric": s.weight_symmetric,
                    **s.extra,
                },
            )
        _quantize_static(self.pre, dst, config, self.calibration_cache)
        q = onnx.load(str(dst))
        onnx.checker.check_model(q)
        ops = [n.op_type for n in q.graph.node]
        return {
            **s.to_dict(),
            "format": "QDQ",
            "calibrate_method": "MinMax",
            "quantize_linear_nodes": ops.count("QuantizeLinear"),
            "dequantize_linear_nodes": ops.count("DequantizeLinear"),
            "quantized_ops": _quantized_op_counts(q),
        }


_NEVER_QDQ = ("QuantizeLinear", "DequantizeLinear", "Shape")


def _quantize_static(pre: Path, dst: str | Path, config, cache: Path) -> None:
    """onnxruntime's quantize(pre, dst, config), reusing the calibration ranges saved in `cache` by an earlier
    call where this onnxruntime can (quantize_static's calibration_cache_path); else it calibrates again."""
    import inspect

    from onnxruntime.quantization import quantize, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        quantize(str(pre), str(dst), config)
        return
    quantize_static(
        str(pre),
        str(dst),
        config.calibration_data_reader,
        quant_format=config.quant_format,
        op_types_to_quantize=config.op_types_to_quantize,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=config.activation_type,
        weight_type=config.weight_type,
        nodes_to_quantize=config.nodes_to_quantize,
        nodes_to_exclude=config.nodes_to_exclude,
        use_external_data_format=config.use_external_data_format,
        calibrate_method=config.calibrate_method,
        extra_options=config.extra_options,
        calibration_cache_path=str(cache),
    )


def to_int8(
    src: str | Path,
    dst: str | Path,
    feeds: list[dict[str, np.ndarray]],
    target: str = "cpu",
    exclude: Iterable[str] = (),
) -> dict:
    """Static QDQ quantisation of `src` calibrated on `feeds`, the nodes in `exclude` left float; returns what
    was done (for export.json)."""
    with Int8Quantizer(src, feeds, target) as quantizer:
        return quantizer.quantize(dst, exclude)


def _quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type whose every input comes from a DequantizeLinear (run as integer kernels)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: dict[str, int] = {}
    for n in model.graph.node:
        inputs = [i for i in n.input if i]
        if (
            n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Shape")
            and inputs
            and all(i in dq_out for i in inputs)
        ):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))
