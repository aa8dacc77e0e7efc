"""`rfm export`: a checkpoint -> ONNX (fp32/fp16/int8) export dir with a parity report against PyTorch."""

from __future__ import annotations

import argparse
import logging

from rfm.cli.args import checkpoint_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (fp32/fp16/int8) with a parity report")
    p.add_argument(
        "--checkpoint", required=True, type=checkpoint_dir, help="checkpoint directory (config.json, model.safetensors, ...)"
    )
    p.add_argument("--out", required=True, help="export directory to write (replaced atomically)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "qnn", "openvino", "tensorrt"],
        help="device family the int8 settings are chosen for (default: cpu); openvino also writes the "
        "OpenVINO IR (policy.xml + policy.bin) and measures parity on the OpenVINO runtime",
    )
    p.add_argument(
        "--calib-dataset",
        default=None,
        help="LeRobot dataset dir: int8 calibration and parity on real frames (default: synthetic)",
    )
    p.add_argument("--calib-samples", type=int, default=64, help="frames for int8 calibration (default: 64)")
    p.add_argument("--parity-samples", type=int, default=16, help="held-out frames for the parity report")
    p.add_argument(
        "--instructions",
        default="",
        help='comma-separated instructions to precompute into instructions.npz, e.g. "push,pick up"',
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument(
        "--exporter",
        default="dynamo",
        choices=["dynamo", "torchscript"],
        help="torch.onnx path (the other is tried if this one fails)",
    )
    p.add_argument(
        "--no-text-encoder",
        action="store_true",
        help="skip text_encoder.onnx (then only --instructions can be served)",
    )
    p.add_argument(
        "--keep-fp32",
        default=None,
        metavar="LAYERS",
        help="int8: comma-separated blocks of the per-block report (e.g. vision.stem,action_out), module path "
        "or node name prefixes, or globs, left in float; 'none' quantises everything (default: the modules the "
        "model marks as needing float, e.g. keypoint heatmaps)",
    )
    p.add_argument(
        "--int8-report",
        default="auto",
        choices=["auto", "always", "off"],
        help="int8: measure the error each block adds by leaving it in float in turn (auto: when parity "
        "misses its goal)",
    )
    p.add_argument("--json", action="store_true", help="print export.json instead of the parity report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rfm.export import ExportConfig, export_checkpoint
    from rfm.export.int8_report import format_per_block
    from rfm.export.parity import format_report

    if not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: directory not found")
    instructions = [s.strip() for s in args.instructions.split(",") if s.strip()]
    if args.no_text_encoder and not instructions:
        raise ValueError(
            "--no-text-encoder needs --instructions (otherwise the export cannot embed any instruction)"
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    config = ExportConfig(
        precision=args.precision,
        target=args.target,
        calib_dataset=args.calib_dataset,
        calib_samples=args.calib_samples,
        parity_samples=args.parity_samples,
        instructions=instructions,
        opset=args.opset,
        exporter=args.exporter,
        text_encoder=not args.no_text_encoder,
        keep_fp32=None if args.keep_fp32 is None else
        [s.strip() for s in args.keep_fp32.split(",") if s.strip() and s.strip() != "none"],
        int8_report=args.int8_report,
    )
    manifest = export_checkpoint(args.checkpoint, args.out, config)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    files = sorted(p.name for p in Path(args.out).iterdir())
    q = manifest.get("quantization") or {}
    print(f"exported {manifest['model_id']} ({manifest['preset']}, {manifest['head']} head) -> {args.out}")
    print(
        f"  precision {manifest['precision']}, target {manifest['target']}, opset {manifest['opset']}, "
        f"exporter {manifest['exporter']}"
    )
    if "quantized_ops" in q:
        print(
            f"  int8: {q['activation_type']} activations, {q['weight_type']} weights, quantised ops "
            f"{q['quantized_ops']}, calibrated on {q['calibration']['samples']} {q['calibration']['source']} "
            "samples"
        )
        for entry, kept in (q.get("keep_fp32") or {}).items():
            print(f"  kept in float: {entry} ({len(kept['nodes'])} nodes in {', '.join(kept['blocks'])})")
    calibration = manifest.get("calibration")
    if calibration:
        note = " (not camera frames: pass --calib-dataset for a more accurate int8 graph)"
        print(f"  calibration: {calibration}{note if calibration == 'synthetic' else ''}")
    print(f"  files: {', '.join(files)}")
    if manifest.get("openvino"):
        ov = manifest["openvino"]
        print(f"  OpenVINO IR: {ov['model']} + {ov['weights']} ({ov['runtime']}, from {ov['source']})")
    print(format_report(manifest["parity"], manifest["interface"]["action_names"]))
    if q.get("per_block"):
        print(format_per_block(q["per_block"]))
    elif manifest["precision"] == "int8" and not manifest["parity"]["goal"]["met"]:
        print("  which layers cost it: rerun with --int8-report always")
    return 0
