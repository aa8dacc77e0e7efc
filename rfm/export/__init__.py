"""Edge export: policy.onnx (fp32/fp16/int8) + text_encoder.onnx + tokenizer + export.json (with parity).

Importing this package does not import torch (OnnxRunner reads export.json through it); exporting does.
"""

from rfm.export.exporter import (
    EXPORT_FILE,
    EXPORT_FORMAT,
    INSTRUCTIONS_FILE,
    POLICY_FILE,
    TEXT_FILE,
    ExportConfig,
    export_checkpoint,
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
