"""Torch -> ONNX for the policy network and the frozen text encoder, with a dynamic batch axis.

Graph I/O (B is dynamic):
    policy.onnx        images (B, N_cam, 3, H, W) uint8, state (B, D_s) f32, text (B, L, D_text) f32,
                       text_mask (B, L) f32 (1 = token, 0 = padding), [noise (B, H, D_a) f32, flow head only],
                       [prefix (B, P, D_a) f32 committed actions in robot units, prefix_len (B,) int64 how many of
                       each row's count (0: none), models with model.prefix_max = P > 0 only]
                       -> actions (B, H, D_a) f32 in robot units (starting with the committed actions)
    text_encoder.onnx  input_ids, attention_mask, token_type_ids (B, L) int64 -> features (B, L, D_text) f32
The text mask is float rather than bool because NPU toolchains (QNN, OpenVINO NPU) reject bool graph inputs.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from rfm.files import as_umask_allows
from rfm.model.network import PolicyNet
from rfm.model.text import TextEncoder

OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
POLICY_INPUTS = ("images", "state", "text", "text_mask")
PREFIX_INPUTS = ("prefix", "prefix_len")  # models with prefix_max > 0 (delay-aware continuation)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ChunkGraph(nn.Module):
    """PolicyNet with a float text mask, for the chunk head."""

    def __init__(self, net: PolicyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images, state, text, text_mask):
        return self.net(images, state, text, text_mask > 0.5)


class FlowGraph(nn.Module):
    """PolicyNet with a float text mask and explicit noise: the Euler loop is unrolled at trace time."""

    def __init__(self, net: PolicyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images, state, text, text_mask, noise):
        return self.net(images, state, text, text_mask > 0.5, noise)


class PrefixChunkGraph(ChunkGraph):
    """ChunkGraph taking committed actions (prefix, prefix_len): models with prefix_max > 0."""

    def forward(self, images, state, text, text_mask, prefix, prefix_len):
        return self.net(images, state, text, text_mask > 0.5, None, prefix, prefix_len)


class PrefixFlowGraph(FlowGraph):
    """FlowGraph taking committed actions (prefix, prefix_len): models with prefix_max > 0."""

    def forward(self, images, state, text, text_mask, noise, prefix, prefix_len):
        return self.net(images, state, text, text_mask > 0.5, noise, prefix, prefix_len)


class TextGraph(nn.Module):
    """Token features with padding zeroed, exactly as TextEncoder._encode_uncached computes them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )  # (B, L, D_text)
        return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)


def policy_example(
    net: PolicyNet, text_dim: int, max_tokens: int, batch: int = 2
) -> tuple[torch.Tensor, ...]:
    """Example inputs (batch >= 2 so the exporter keeps the batch axis symbolic)."""
    itf = net.config.interface
    g = torch.Generator().manual_seed(0)
    args = [
        torch.randint(0, 256, (batch, len(itf.cameras), 3, *itf.image_size), dtype=torch.uint8, generator=g),
        torch.randn(batch, itf.state_dim, generator=g),
        torch.randn(batch, max_tokens, text_dim, generator=g),
        torch.ones(batch, max_tokens),
    ]
    args[3][:, max_tokens // 2 :] = 0.0
    if net.head_type == "flow":
        args.append(torch.randn(batch, itf.chunk_size, itf.action_dim, generator=g))
    if net.prefix_max:  # rows with and without committed actions: the traced graph takes both paths
        args.append(torch.randn(batch, net.prefix_max, itf.action_dim, generator=g))
        args.append(torch.arange(batch, dtype=torch.int64) % (net.prefix_max + 1))
    return tuple(args)


def policy_input_names(net: PolicyNet) -> list[str]:
    """policy.onnx's inputs, in order, for `net`."""
    return [*POLICY_INPUTS, *(["noise"] if net.head_type == "flow" else []),
            *(PREFIX_INPUTS if net.prefix_max else [])]


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_name: str,
    opset: int,
    exporter: str,
) -> str:
    """Export with the chosen exporter (falling back to the other on failure); returns the one that worked."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: expected one of {EXPORTERS}")
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    errors = []
    for name in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                common = {"input_names": input_names, "output_names": [output_name], "opset_version": opset}
                if name == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    extra = {"dynamo": True, "external_data": False, "verbose": False,
                             "dynamic_shapes": {n: {0: batch} for n in _arg_names(module)}}
                else:
                    extra = {"dynamo": False, "dynamic_axes": {n: {0: "batch"} for n in [*input_names, output_name]}}
                torch.onnx.export(module, args, str(path), **common, **extra)
            onnx.checker.check_model(str(path), full_check=True)
            return name
        except Exception as e:  # noqa: BLE001 - try the other exporter, report both if both fail
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:500]}")
    raise RuntimeError(
        f"ONNX export of {type(module).__name__} failed with every exporter:\n" + "\n".join(errors)
    )


def _arg_names(module: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters]


def export_policy_graph(
    net: PolicyNet,
    path: str | Path,
    text_dim: int,
    max_tokens: int,
    opset: int = OPSET,
    exporter: str = "dynamo",
    cache_dir: Path | None = None,
) -> str:
    """Write policy.onnx (fp32) for `net`; returns the exporter used. With `cache_dir`, a graph traced before from
    the same weights and configuration is copied instead of traced again (rfm.export.graph_cache)."""
    from rfm.export.graph_cache import cached_graph, policy_graph_key

    net = net.eval().cpu()
    flow, prefix = net.head_type == "flow", bool(net.prefix_max)
    graph = {(False, False): ChunkGraph, (True, False): FlowGraph, (False, True): PrefixChunkGraph,
             (True, True): PrefixFlowGraph}[(flow, prefix)]
    module = graph(net).eval()
    args = policy_example(net, text_dim, max_tokens)
    names = policy_input_names(net)

    def export(out: Path) -> None:
        with torch.no_grad():
            used = _export(module, args, out, names, "actions", opset, exporter)
        _rename_dims(out, used)

    key = policy_graph_key(module, net.config.to_json(), args, opset, exporter) if cache_dir is not None else ""
    cached_graph(Path(path), "policy", key, cache_dir, export)
    return traced_with(path)


def export_text_graph(
    text: TextEncoder, path: str | Path, opset: int = OPSET, exporter: str = "dynamo", cache_dir: Path | None = None
) -> str:
    """Write text_encoder.onnx (fp32) for the frozen sentence encoder; returns the exporter used. With `cache_dir`,
    the same encoder's graph is traced once and reused by every export (rfm.export.graph_cache)."""
    from rfm.export.graph_cache import cached_graph, text_graph_key

    module = TextGraph(text.model.cpu()).eval()
    tok = text.tokenize(["pick up the red block", "push"])
    args = tuple(torch.from_numpy(tok[k]) for k in TEXT_INPUTS)

    def export(out: Path) -> None:
        with torch.no_grad():
            used = _export(module, args, out, list(TEXT_INPUTS), "features", opset, exporter)
        _rename_dims(out, used)

    key = text_graph_key(text.model, text.max_tokens, opset, exporter) if cache_dir is not None else ""
    cached_graph(Path(path), "text-encoder", key, cache_dir, export)
    return traced_with(path)


EXPORTER_KEY = "rfm.exporter"  # metadata_props entry: which torch.onnx exporter traced the graph


def traced_with(path: str | Path) -> str:
    """The exporter that traced a graph written here ("unknown" for one written elsewhere)."""
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == EXPORTER_KEY), "unknown")


def _rename_dims(path: Path, exporter: str) -> None:
    """Name the dynamic batch axis 'batch' on every input and output (exporters pick names like 's77') and record
    the exporter in the graph's metadata."""
    model = onnx.load(str(path))
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, EXPORTER_KEY: exporter})
    save_model(model, path)


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Save as one file (no external data) via a temp file, so a crash never leaves a half-written graph."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        as_umask_allows(tmp)  # mkstemp creates 0600; exports are meant to be shipped and read by services
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def io_spec(path: str | Path) -> dict:
    """{'inputs': [{name, shape, dtype}], 'outputs': [...]} of an ONNX file; symbolic dims as names."""
    model = onnx.load(str(path), load_external_data=False)

    def one(vi) -> dict:
        t = vi.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {"name": vi.name, "shape": shape, "dtype": _DTYPES.get(t.elem_type, str(t.elem_type))}

    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": [one(v) for v in model.graph.input if v.name not in inits],
        "outputs": [one(v) for v in model.graph.output],
    }
