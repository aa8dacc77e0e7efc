"""Edge export: policy.onnx (fp32/fp16/int8) + text_encoder.onnx + tokenizer + export.json (with parity).

Importing this package imports neither torch nor onnx: the exporter loads on first use of ExportConfig or
export_checkpoint, so the engine cache (rfm.export.engine) serves an existing export on an install without them
(`rfm[edge,server]`). The export directory's format (export.json and the file names) lives in
rfm.runtime.manifest, which the ONNX runner reads without importing this package.
"""

from typing import Any

from rfm.runtime.manifest import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    INSTRUCTIONS_FILE,
    POLICY_FILE,
    TEXT_FILE,
    read_manifest,
)

__all__ = [
    "EXPORT_FILE",
    "EXPORT_FORMAT",
    "INSTRUCTIONS_FILE",
    "POLICY_FILE",
    "TEXT_FILE",
    "ExportConfig",
    "export_checkpoint",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name in ("ExportConfig", "export_checkpoint"):
        from rfm.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'rfm.export' has no attribute {name!r}")
