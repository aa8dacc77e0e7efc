"""The export directory's manifest (export.json) and file names: written by rfm.export, read by the runners.

Here, in the runtime, so that running an export never imports the exporter (torch.onnx, onnxscript).
"""

from __future__ import annotations

import json
from pathlib import Path

EXPORT_FORMAT = "rfm-export-v1"
EXPORT_FILE = "export.json"
POLICY_FILE = "policy.onnx"
TEXT_FILE = "text_encoder.onnx"
INSTRUCTIONS_FILE = "instructions.npz"
OV_MODEL_FILE = "policy.xml"  # OpenVINO IR of policy.onnx (--target openvino), with its weights file:
OV_WEIGHTS_FILE = "policy.bin"


def read_manifest(export_dir: str | Path) -> dict:
    """export.json of an export dir, checked for format; errors name the file."""
    path = Path(export_dir) / EXPORT_FILE
    if not Path(export_dir).is_dir():
        raise FileNotFoundError(f"{export_dir}: export directory not found")
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: missing (an export directory is written by `rfm export` and holds "
            f"{POLICY_FILE} and {EXPORT_FILE})"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{path}: format={fmt!r}, expected {EXPORT_FORMAT!r}")
    return manifest


def parity_summary(parity: dict | None) -> dict | None:
    """export.json's parity goal as {metric, value, limit, met}; None for exports that recorded none."""
    goal = (parity or {}).get("goal")
    if not isinstance(goal, dict) or goal.get("metric") not in parity:
        return None
    return {"metric": goal["metric"], "value": parity[goal["metric"]], "limit": goal.get("limit"),
            "met": goal.get("met")}
