"""The export directory's manifest (export.json) and file names: written by rfm.export, read by the runners.

Here, in the runtime, so that running an export never imports the exporter (torch.onnx, onnxscript).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

EXPORT_FORMAT = "rfm-export-v1"
EXPORT_FILE = "export.json"
POLICY_FILE = "policy.onnx"
TEXT_FILE = "text_encoder.onnx"
INSTRUCTIONS_FILE = "instructions.npz"
OV_MODEL_FILE = "policy.xml"  # OpenVINO IR of policy.onnx (--target openvino), with its weights file:
OV_WEIGHTS_FILE = "policy.bin"
# what every export.json has, and what it is: a runner reads these before anything else
REQUIRED = {"interface": dict, "head": str, "model_id": str, "model_version": str, "precision": str, "target": str,
            "policy": str, "text": dict}


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
    bad = [key for key, kind in REQUIRED.items() if not isinstance(manifest.get(key), kind)]
    if bad:
        kind = "an object" if REQUIRED[bad[0]] is dict else "a string"
        raise ValueError(f"{path}: field {bad[0]!r} is missing or not {kind} (export.json is written by `rfm export`; "
                         f"export again rather than edit it)")
    check_files(Path(export_dir), manifest.get("files"))
    return manifest


def load_or_explain(path: Path, what: str, load: Callable[[Path], T]) -> T:
    """load(path), or a ValueError naming the file when a runtime cannot read it (a file of the right size but
    corrupt, or replaced since `rfm export`): one line, not the runtime's traceback."""
    try:
        return load(path)
    except (FileNotFoundError, ModuleNotFoundError, MemoryError):  # not the file's fault: as they are
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime, OpenVINO and tokenizers raise their own types
        lines = str(e).strip().splitlines()
        said = lines[0][:200] if lines else ""
        raise ValueError(f"{path}: {what} cannot be loaded ({type(e).__name__}{f': {said}' if said else ''}); it is "
                         f"corrupt or changed since `rfm export`: copy or export it again") from None


def file_record(export_dir: Path) -> dict:
    """{relative path: {"bytes", "sha256"}} of every file in an export directory but export.json."""
    import hashlib

    out = {}
    for f in sorted(p for p in export_dir.rglob("*") if p.is_file() and p.name != EXPORT_FILE):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.relative_to(export_dir).as_posix()] = {"bytes": f.stat().st_size, "sha256": h.hexdigest()}
    return out


def check_files(export_dir: Path, files: dict | None) -> None:
    """Each file export.json lists is there, and each binary one (graphs, weights, tables) at its recorded size
    (a stat each, no hashing): a truncated copy is named before any runtime parses it. JSON files may be edited
    (stats.json's limits, say) and name themselves when broken. Exports without the record are not checked."""
    for name, rec in (files or {}).items():
        path = export_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (export.json lists it; copy the whole export directory)")
        if name.endswith(".json"):
            continue
        size = path.stat().st_size
        if size != rec.get("bytes", size):
            raise ValueError(f"{path}: {size} bytes, export.json records {rec['bytes']}: truncated or changed since "
                             f"`rfm export`; copy or export it again")


def parity_summary(parity: dict | None) -> dict | None:
    """export.json's parity goal as {metric, value, limit, met}; None for exports that recorded none."""
    goal = (parity or {}).get("goal")
    if not isinstance(goal, dict) or goal.get("metric") not in parity:
        return None
    return {"metric": goal["metric"], "value": parity[goal["metric"]], "limit": goal.get("limit"),
            "met": goal.get("met")}
