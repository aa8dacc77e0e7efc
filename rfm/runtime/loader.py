"""Pick a runner for a checkpoint or export directory by backend name."""

from __future__ import annotations

from pathlib import Path

from rfm.constants import BACKENDS
from rfm.runtime.base import Runner


def load_runner(path: str | Path, backend: str = "torch", device: str = "auto", **kw) -> Runner:
    """TorchRunner for a checkpoint dir, OnnxRunner for an export dir (policy.onnx + export.json), OpenVinoRunner
    for an export dir with an OpenVINO IR (`rfm export --target openvino`)."""
    from rfm.config import did_you_mean

    if backend == "torch":
        from rfm.runtime.torch_runner import TorchRunner

        return TorchRunner.from_checkpoint(path, device=device, **kw)
    if backend == "onnx":
        from rfm.runtime.onnx_runner import OnnxRunner

        return OnnxRunner.from_dir(path, **kw)
    if backend == "openvino":
        from rfm.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner.from_dir(path, **kw)
    raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.{did_you_mean(backend, list(BACKENDS))}")
