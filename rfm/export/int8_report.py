"""Which quantised layers cost an int8 export its accuracy: error attribution by block, and `keep_fp32` resolution.

A block is a torch module path (`vision.layers.2`, `encoder.0`, `decoder.1.cross_attn`, `action_out`) and the
quantised nodes (Conv/MatMul/Gemm on the cpu target) exported from it. The module path of a node comes from the
dynamo exporter's metadata (`pkg.torch.onnx.name_scopes`) or from the TorchScript exporter's node names
(`/net/encoder.0/attn/q/MatMul`). Blocks start at the top-level modules; a block of more than `max_nodes` nodes
(8 for the Conv/MatMul/Gemm of a small model) is split into its submodules. A block named after a module whose
submodules have rows of their own (`encoder.0` beside `encoder.0.attn`) holds the rest of that module's nodes;
as a keep_fp32 entry the name still means the whole module (every path under it).

The report quantises the graph once per block with only that block int8 (its cost), with the calibration ranges
of the export, and measures the action error on the held-out parity samples in the unit of the int8 parity goal:
mean |error| as % of each action dimension's range, worst dimension. For the costliest blocks it also quantises
everything but that block: the gain is what keeping it in float (`rfm export --keep-fp32 BLOCK`) takes off the
export's error.
"""

from __future__ import annotations

import ast
import fnmatch
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

METRIC = "mean_abs_error_pct_of_range_max"
WRAPPER = "net."  # the export wrappers (rfm.export.graph.ChunkGraph / FlowGraph) hold the PolicyNet as `net`
OTHER = "(graph)"  # nodes with no module path: the wrapper's own ops, nodes the pre-processing made


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> torch module path ("encoder.0.attn.q"), for the nodes whose exporter recorded one."""
    paths = {}
    for n in model.graph.node:
        scopes = next((p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes is not None:  # dynamo: "['', 'net', 'net.encoder.0', ..., 'linear_4']"; the last is the op
            names = ast.literal_eval(scopes)
            path = names[-2] if len(names) >= 2 else ""
        elif n.name.startswith("/"):  # TorchScript: "/net/encoder.0/mlp/mlp.0/MatMul"; the last is the op
            parts: list[str] = []
            for c in n.name.strip("/").split("/")[:-1]:
                if parts and c.startswith(parts[-1] + "."):  # "mlp/mlp.0": a container's child repeats it
                    parts[-1] = c
                else:
                    parts.append(c)
            path = ".".join(parts)
        else:
            continue
        path = path.removeprefix(WRAPPER) if path != WRAPPER[:-1] else ""
        if path:
            paths[n.name] = path
    return paths


def group_blocks(paths: dict[str, str], nodes: Iterable[str], max_nodes: int | None = None) -> dict[str, list[str]]:
    """Quantisable `nodes` (graph order) -> {block: node names}, blocks in graph order; see the module doc.
    max_nodes: None = max(8, 1/12 of the nodes), so a whole-graph (qnn) quantisation gets blocks of a similar
    count."""
    nodes = list(nodes)
    max_nodes = max_nodes or max(8, -(-len(nodes) // 12))
    paths = {n: paths.get(n, "") for n in nodes}

    def split(prefix: str, members: list[str]) -> dict[str, list[str]]:
        depth = prefix.count(".") + 1 if prefix else 0
        children: dict[str, list[str]] = {}
        for n in members:
            parts = paths[n].split(".")
            key = ".".join(parts[: depth + 1]) if len(parts) > depth else prefix
            children.setdefault(key, []).append(n)
        if prefix and len(members) <= max_nodes:
            return {prefix: members}
        if len(children) == 1 and prefix not in children:  # one submodule holds them all: look inside it
            return split(next(iter(children)), members)
        if prefix and len(children) < 2:  # a module's own nodes, no submodules to split them by
            return {prefix: members}
        out: dict[str, list[str]] = {}
        rest = []  # the module's own nodes, and submodules too small for a row of their own (whole-graph qnn)
        for key, group in children.items():
            if prefix and (key == prefix or len(group) < max_nodes // 8):
                rest += group
            else:
                out.update(split(key, group))
        return {prefix: rest, **out} if rest else out

    blocks = split("", [n for n in nodes if paths[n]])
    rest = [n for n in nodes if not paths[n]]
    if rest:
        blocks[OTHER] = rest
    order = {n: i for i, n in enumerate(nodes)}
    return dict(sorted(blocks.items(), key=lambda kv: order[kv[1][0]]))


def _matches(pattern: str, block: str, node: str, path: str) -> bool:
    if pattern == block:
        return True
    return any(t and (t == pattern or t.startswith(pattern + ".") or fnmatch.fnmatchcase(t, pattern))
               for t in (path, node))


def resolve_keep_fp32(
    patterns: Iterable[str], blocks: dict[str, list[str]], paths: dict[str, str]
) -> dict[str, list[str]]:
    """keep_fp32 entries (block names, module path or node name prefixes, globs) -> {entry: node names}.
    An entry that matches no quantisable node is an error naming the known blocks."""
    node_block = {n: b for b, members in blocks.items() for n in members}
    out = {}
    for p in patterns:
        hit = [n for n, b in node_block.items() if _matches(p, b, n, paths.get(n, ""))]
        if not hit:
            from rfm.config import did_you_mean

            raise ValueError(
                f"keep_fp32 {p!r} (--keep-fp32): matches no quantised node.{did_you_mean(p, list(blocks))} "
                f"Known blocks: {', '.join(blocks)} (or a module path / node name prefix, or a glob)"
            )
        out[p] = hit
    return out


def action_error(policy, feed: dict[str, np.ndarray], action_range: np.ndarray | None) -> Callable[[Path], float]:
    """graph path -> its METRIC against PyTorch on `feed` (all samples in one batch); PyTorch runs once."""
    from rfm.runtime.onnx_runner import import_onnxruntime

    ort = import_onnxruntime()  # telemetry off

    from rfm.export.parity import mean_error_pct_of_range, torch_reference

    ref = torch_reference(policy, feed)

    def run(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        out = session.run(["actions"], {k: feed[k] for k in names})[0]
        return float(mean_error_pct_of_range(policy, out, ref, action_range).max())

    return run


def per_block_report(
    quantizer,
    blocks: dict[str, list[str]],
    exclude: list[str],
    error: Callable[[Path], float],
    int8_graph: Path,
    gain_top: int = 5,
) -> dict:
    """Quantise each block alone (everything else float, on top of `exclude` kept float) with `quantizer`
    (rfm.export.quantize.Int8Quantizer: same calibration ranges as `int8_graph`, the export) and measure `error`;
    for the `gain_top` costliest blocks also quantise everything but that block. Rows sorted by cost
    (error_alone), largest first."""
    t0 = time.perf_counter()
    skip = set(exclude)
    path = quantizer.workdir / "report_block.onnx"
    base = error(int8_graph)
    rows = []
    for block, members in blocks.items():
        nodes = [n for n in members if n not in skip]
        if not nodes:  # already kept in float
            continue
        only = set(nodes)
        quantizer.quantize(path, [n for n in quantizer.candidates if n not in only])
        rows.append({"block": block, "nodes": len(nodes), "error_alone": error(path),
                     "error_if_fp32": None, "gain": None, "_nodes": nodes})
    rows.sort(key=lambda r: -r["error_alone"])
    for r in rows[:gain_top]:
        quantizer.quantize(path, [*exclude, *r["_nodes"]])
        r["error_if_fp32"] = error(path)
        r["gain"] = base - r["error_if_fp32"]
    for r in rows:
        del r["_nodes"]
    return {
        "metric": METRIC,
        "method": "error_alone: only this block int8, every other node float; error_if_fp32 (costliest "
        f"{gain_top} blocks): this block float, the rest as exported (gain: int8_error minus that). Same "
        "calibration ranges as the export; error on the held-out parity samples, onnxruntime CPU",
        "int8_error": base,
        "kept_fp32_nodes": len(skip & set(quantizer.candidates)),
        "blocks": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_per_block(report: dict, top: int = 12) -> str:
    """The per-block report as a table, costliest block first."""
    rows = report["blocks"]
    width = max([len(r["block"]) for r in rows[:top]] + [5])
    lines = [
        (
            f"int8 error by block ({report['metric']} in %; the export: {report['int8_error']:.3f}%; "
            f"{report['seconds']:g} s):"
        ),
        f"  {'block':<{width}}  nodes  only this block int8  this block fp32 (gain)",
    ]
    for r in rows[:top]:
        kept = "" if r["gain"] is None else f"{r['error_if_fp32']:.3f} ({r['gain']:+.3f})"
        lines.append(f"  {r['block']:<{width}}  {r['nodes']:>5}  {r['error_alone']:>20.3f}  {kept}".rstrip())
    if len(rows) > top:
        lines.append(f"  ... {len(rows) - top} more blocks in export.json (quantization.per_block)")
    lines.append("  keep blocks in float: rfm export ... --keep-fp32 BLOCK[,BLOCK...]")
    return "\n".join(lines)
