"""`export_checkpoint`: a checkpoint dir -> an export dir that runs with onnxruntime + tokenizers, no torch.

Export dir layout (flat, written atomically):
    policy.onnx         the policy at the requested precision (see rfm.export.graph for its I/O)
    text_encoder.onnx   the frozen sentence encoder, fp32 (run once per new instruction, then cached)
    tokenizer.json ...  the text encoder's tokenizer files
    instructions.npz    precomputed text features: the trained instructions (config.json meta.data.tasks) plus
                        any asked for (ExportConfig.instructions); absent when there are none
    stats.json          the checkpoint's normalisation stats, as in the checkpoint: `rfm serve` derives its
                        action limits from them exactly as for the checkpoint (rfm.runtime.limits)
    policy.xml/.bin     with target "openvino": policy.onnx as OpenVINO IR (rfm.export.openvino_ir); the parity
                        report is then measured on the OpenVINO runtime, onnxruntime's in parity_onnxruntime
    export.json         I/O spec, robot interface, model identity, precision/target, calibration, quantisation
                        (int8: the layers kept float, and the per-block error report, rfm.export.int8_report),
                        parity, prefix_max (how many committed actions the graph's prefix input takes; 0 or
                        absent: the graph has no prefix / prefix_len inputs)

A model with model.prefix_max > 0 (delay-aware continuation) exports with two more inputs, prefix and prefix_len
(rfm.export.graph); its calibration and parity samples carry committed actions (rfm.export.samples), so int8
ranges cover the prefix path and parity is measured with and without a prefix in the same batches.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rfm.constants import STATS_FILE
from rfm.export.quantize import PRECISIONS, TARGETS
from rfm.runtime.manifest import (  # the export directory's format: written here, read by the ONNX runner
    EXPORT_FILE,
    EXPORT_FORMAT,
    INSTRUCTIONS_FILE,
    POLICY_FILE,
    TEXT_FILE,
    file_record,
)

log = logging.getLogger(__name__)
INT8_REPORT = ("auto", "always", "off")


@dataclass
class ExportConfig:
    """What to export and how to check it."""

    precision: str = "fp32"  # fp32 | fp16 | int8
    target: str = "cpu"  # cpu | qnn | openvino | tensorrt (int8 settings; openvino also writes the IR)
    calib_dataset: str | None = None  # LeRobot dataset dir for int8 calibration and parity (else synthetic)
    calib_samples: int = 64  # frames used to calibrate int8 activation ranges
    parity_samples: int = 16  # held-out frames for the parity report
    parity_batch_sizes: tuple[int, ...] = (
        1,
        3,
    )  # batch sizes the parity check runs (plus all samples at once)
    instructions: list[str] = field(default_factory=list)  # precompute these into instructions.npz
    opset: int = 18
    exporter: str = "dynamo"  # torch.onnx path: "dynamo" (torch.export + onnxscript) or "torchscript"
    text_encoder: bool = True  # also export text_encoder.onnx + tokenizer
    cache_dir: str | None = None  # where traced graphs are reused from (None: the engine cache; "": off)
    # int8: blocks / module paths / node names left float; None: the modules the model marks (int8_float_modules)
    keep_fp32: list[str] | None = None
    int8_report: str = "auto"  # per-block int8 error report: "auto" (when parity misses its goal) | "always" | "off"

    def __post_init__(self) -> None:
        from rfm.config import did_you_mean

        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r}: expected one of {PRECISIONS}."
                f"{did_you_mean(self.precision, list(PRECISIONS))}"
            )
        if self.target not in TARGETS:
            raise ValueError(
                f"target={self.target!r}: expected one of {TARGETS}."
                f"{did_you_mean(self.target, list(TARGETS))}"
            )
        if self.opset < 17:
            raise ValueError(f"opset={self.opset}: expected >= 17 (LayerNormalization)")
        if self.calib_samples < 1 or self.parity_samples < 1:
            raise ValueError(
                f"calib_samples={self.calib_samples}, parity_samples={self.parity_samples}: expected >= 1"
            )
        self.instructions = [s for s in (t.strip() for t in self.instructions) if s]
        if self.keep_fp32 is not None:
            self.keep_fp32 = [s for s in (t.strip() for t in self.keep_fp32) if s]
        if self.keep_fp32 and self.precision != "int8":
            raise ValueError(f"keep_fp32={self.keep_fp32}: only an int8 export has layers to keep in float "
                             f"(precision={self.precision!r})")
        if self.int8_report not in INT8_REPORT:
            raise ValueError(f"int8_report={self.int8_report!r}: expected one of {INT8_REPORT}")
        if not self.text_encoder and not self.instructions:
            raise ValueError(
                "text_encoder=False needs instructions: without the text graph only a precomputed "
                "instruction table can be served"
            )


def _check_out_dir(out: Path, checkpoint: Path | None) -> None:
    if checkpoint is not None and out.resolve() == checkpoint.resolve():
        raise ValueError(f"--out {out}: is the checkpoint directory itself; choose another directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_FILE).exists())):
        raise ValueError(
            f"--out {out}: exists and is not an rfm export directory (no {EXPORT_FILE}); refusing to "
            "replace it"
        )


def _write_tokenizer(text, tmp: Path) -> dict:
    """Tokenizer files into the export dir, and the settings OnnxRunner needs to reproduce tokenize()."""
    saved = text.save_tokenizer(tmp)
    if not (tmp / "tokenizer.json").exists():
        raise RuntimeError(
            f"text encoder {text.name!r} has no fast tokenizer (tokenizer.json); OnnxRunner needs one"
        )
    return {
        "files": sorted(saved["files"]),
        "max_tokens": text.max_tokens,
        "pad_token": saved["pad_token"],
        "pad_id": saved["pad_id"],
        "pad_type_id": 0,
    }


def calibration_source(cfg: ExportConfig) -> str | None:
    """What int8 activation ranges were calibrated on: "synthetic" or "dataset: PATH"; None for fp32/fp16."""
    if cfg.precision != "int8":
        return None
    return f"dataset: {cfg.calib_dataset}" if cfg.calib_dataset else "synthetic"


def _text_parity(text, run) -> float:
    """Max |features - PyTorch's| of the text graph, run by `run` (tokens -> features), on a few instructions."""
    texts = [
        "pick up the red block",
        "push",
        "open the top drawer and put the sponge inside it, then close it",
    ]
    ref, _ = text._encode_uncached(texts)
    out = run(text.tokenize(texts))
    return float(np.abs(out - ref).max())


def export_checkpoint(checkpoint, out: str | Path, config: ExportConfig | None = None) -> dict:
    """Export a checkpoint dir (or an RFMPolicy) to `out`; returns export.json's content."""
    from rfm.runtime.onnx_runner import import_onnxruntime

    ort = import_onnxruntime()  # telemetry off

    from rfm.checkpoint import atomic_dir
    from rfm.export.feeds import observation_arrays, split_feed
    from rfm.export.graph import export_policy_graph, export_text_graph, io_spec
    from rfm.export.parity import parity_report
    from rfm.export.quantize import to_fp16
    from rfm.export.samples import dataset_samples, synthetic_samples
    from rfm.model.policy import RFMPolicy
    from rfm.model.serialization import jsonable

    cfg = config or ExportConfig()
    out = Path(out)
    if cfg.target == "openvino":
        from rfm.export import openvino_ir

        openvino_ir.import_openvino()  # a missing package fails here, not after the export
    if isinstance(checkpoint, RFMPolicy):
        policy, ckpt_dir = checkpoint, None
    else:
        ckpt_dir = Path(checkpoint)
        policy = RFMPolicy.from_pretrained(ckpt_dir)
    policy.to("cpu")
    _check_out_dir(out, ckpt_dir)
    itf, m = policy.interface, policy.model_config
    calibration = calibration_source(cfg)  # "synthetic": synthetic_samples logs a warning
    trained = list(policy.meta.get("data", {}).get("tasks", []))  # for instruction snapping
    table = list(dict.fromkeys([*cfg.instructions, *trained]))  # precomputed into instructions.npz
    prefix_max = policy.model_config.prefix_max

    if cfg.calib_dataset:
        samples = dataset_samples(
            cfg.calib_dataset, cfg.calib_samples if cfg.precision == "int8" else 1, cfg.parity_samples, itf,
            prefix_max=prefix_max,
        )
    else:
        samples = synthetic_samples(
            itf,
            cfg.calib_samples if cfg.precision == "int8" else 0,
            cfg.parity_samples,
            policy.stats,
            cfg.instructions or None,
            prefix_max=prefix_max,
        )

    with atomic_dir(out) as tmp, contextlib.ExitStack() as hold:
        fp32 = tmp / (POLICY_FILE if cfg.precision == "fp32" else "policy_fp32.onnx")
        log.info("exporting policy graph (%s, %s head)", m.preset, m.head)
        exporter = export_policy_graph(
            policy.net, fp32, policy.text.dim, m.text_max_tokens, cfg.opset, cfg.exporter, cache_dir=_graph_cache(cfg)
        )
        quant: dict | None = None
        int8 = None  # (quantizer, blocks, nodes kept float) for the per-block report
        if cfg.precision == "fp16":
            quant = to_fp16(fp32, tmp / POLICY_FILE)
        elif cfg.precision == "int8":
            log.info(
                "calibrating int8 (%s) on %d %s samples", cfg.target, len(samples.calibration), samples.source
            )
            calib = split_feed(observation_arrays(policy, samples.calibration, seed=1), 8)
            quant, int8 = _quantize_int8(fp32, tmp / POLICY_FILE, calib, cfg, hold, policy.net.int8_float_modules())
            quant["calibration"] = {
                "source": samples.source,
                "dataset": samples.dataset,
                "samples": len(samples.calibration),
            }
        if fp32.name != POLICY_FILE:
            fp32.unlink()

        text_info: dict = {
            "encoder": m.text_encoder,
            "dim": policy.text.dim,
            "max_tokens": m.text_max_tokens,
            "graph": None,
            "instructions": None,
        }
        text_err = None
        if cfg.text_encoder:
            export_text_graph(policy.text, tmp / TEXT_FILE, cfg.opset, cfg.exporter, cache_dir=_graph_cache(cfg))
            text_info["graph"] = TEXT_FILE
            text_info["tokenizer"] = _write_tokenizer(policy.text, tmp)
            text_info["io"] = io_spec(tmp / TEXT_FILE)
            text_session = ort.InferenceSession(str(tmp / TEXT_FILE), providers=["CPUExecutionProvider"])
            text_err = _text_parity(policy.text, lambda tok: text_session.run(["features"], tok)[0])
        if table:
            feats, mask = policy.text.encode(table)
            np.savez(tmp / INSTRUCTIONS_FILE, instructions=np.array(table), features=feats, mask=mask)
            text_info["instructions"] = {"file": INSTRUCTIONS_FILE, "count": len(table)}
        # the same file the checkpoint holds, written the same way: serving derives limits from it (one path)
        (tmp / STATS_FILE).write_text(json.dumps(jsonable(policy.stats), indent=2))

        session = ort.InferenceSession(str(tmp / POLICY_FILE), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        held = observation_arrays(policy, samples.held_out, seed=2)

        def report(run, runtime: str) -> dict:
            return parity_report(policy, run, held, cfg.precision, samples.source, cfg.parity_batch_sizes,
                                 samples.action_range, runtime)

        parity = report(lambda f: session.run(["actions"], {k: f[k] for k in names})[0],
                        f"onnxruntime {ort.__version__}")
        if text_err is not None:
            parity["text_encoder_max_abs_error"] = text_err
        ov_info = onnx_parity = None
        if cfg.target == "openvino":  # the IR, and parity on the runtime that runs it
            ov_info = openvino_ir.write_ir(tmp / POLICY_FILE, tmp)
            onnx_parity, parity = parity, report(openvino_ir.load_ir(tmp), ov_info["runtime"])
            if cfg.text_encoder:
                ov_text = openvino_ir.load_ir(tmp, TEXT_FILE)
                parity["text_encoder_max_abs_error"] = _text_parity(policy.text, ov_text)

        if int8 is not None and _want_int8_report(cfg, parity):
            from rfm.export.int8_report import action_error, per_block_report

            log.info("int8 error by block: quantising each of %d blocks in turn", len(int8[1]))
            error = action_error(policy, held, samples.action_range)
            quant["per_block"] = per_block_report(*int8, error, tmp / POLICY_FILE)
        spec = io_spec(tmp / POLICY_FILE)
        manifest = {
            "format": EXPORT_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rfm_version": _rfm_version(),
            "model_id": policy.meta.get("model_id", "rfm"),
            "model_version": policy.meta.get("model_version", "unsaved"),
            "trained_instructions": trained,
            "checkpoint": str(Path(ckpt_dir).resolve()) if ckpt_dir else None,
            "data": policy.meta.get("data"),  # what it trained on and held out: offline eval needs no checkpoint
            "preset": m.preset,
            "head": m.head,
            "flow_steps": m.flow_steps if m.head == "flow" else None,
            "prefix_max": prefix_max,
            "execution": policy.meta.get("execution"),  # the recommended actions per request (rfm.runtime.execution)
            "precision": cfg.precision,
            "target": cfg.target,
            "calibration": calibration,
            "opset": _graph_opset(tmp / POLICY_FILE),  # cfg.opset, or 21 where 16-bit quantisation needs it
            "exporter": exporter,
            "policy": POLICY_FILE,
            "inputs": spec["inputs"],
            "outputs": spec["outputs"],
            "interface": itf.to_dict(),
            "stats": STATS_FILE,
            "normalization": {
                "mode": m.norm_mode,
                "inside_graph": True,
                "action_offset": policy.net.action_norm.offset.tolist(),
                "action_scale": policy.net.action_norm.scale.tolist(),
            },
            "text": text_info,
            "quantization": quant,
            "openvino": ov_info,
            "parity": parity,
            **({"parity_onnxruntime": onnx_parity} if onnx_parity else {}),
            "export_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        }
        manifest["files"] = file_record(tmp)  # what loading checks: a truncated or replaced file is named at once
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def _quantize_int8(fp32: Path, dst: Path, calib: list, cfg: ExportConfig, hold: contextlib.ExitStack,
                   model_float: list[str]):
    """Int8 `fp32` -> `dst` with cfg.keep_fp32 (None: the model's `model_float` modules that are in the graph) left
    float; returns (export.json's quantization entry, (quantizer, blocks, nodes kept float)); the quantizer stays
    open in `hold` for the per-block report."""
    import onnx

    from rfm.export.int8_report import group_blocks, module_paths, resolve_keep_fp32
    from rfm.export.quantize import Int8Quantizer

    quantizer = hold.enter_context(Int8Quantizer(fp32, calib, cfg.target))
    paths = module_paths(onnx.load(str(fp32)))
    blocks = group_blocks(paths, quantizer.candidates)
    keep = cfg.keep_fp32
    if keep is None:  # the model's own list, where those modules made quantisable nodes of this graph
        cands = [paths.get(n, "") for n in quantizer.candidates]
        keep = [m for m in model_float if any(c == m or c.startswith(m + ".") for c in cands)]
    kept = resolve_keep_fp32(keep, blocks, paths)
    nodes = list(dict.fromkeys(n for hit in kept.values() for n in hit))
    quant = quantizer.quantize(dst, nodes)
    quant["keep_fp32_source"] = "model" if cfg.keep_fp32 is None else "config"
    quant["keep_fp32"] = {  # {entry: {"blocks": [blocks it touches], "nodes": [node names left float]}}
        p: {"blocks": [b for b, members in blocks.items() if set(members) & set(hit)], "nodes": hit}
        for p, hit in kept.items()
    }
    quant["per_block"] = None  # filled in when the report runs (ExportConfig.int8_report)
    return quant, (quantizer, blocks, nodes)


def _want_int8_report(cfg: ExportConfig, parity: dict) -> bool:
    return cfg.int8_report == "always" or (cfg.int8_report == "auto" and not parity["goal"]["met"])


def _graph_cache(cfg: ExportConfig) -> Path | None:
    from rfm.export.cache_dir import cache_root

    return None if cfg.cache_dir == "" else cache_root(cfg.cache_dir)


def _graph_opset(path: Path) -> int:
    """The default-domain opset the graph file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rfm_version() -> str:
    from rfm._version import __version__

    return __version__
