"""Edge export: policy.onnx (fp32/fp16/int8) + text_encoder.onnx + tokenizer + export.json (with parity).

Importing this package does not import torch; exporting does. The export directory's format (export.json and the
file names) lives in rfm.runtime.manifest, which the ONNX runner reads without importing this package.
"""

from rfm.export.exporter import ExportConfig, export_checkpoint
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
