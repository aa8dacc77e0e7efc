"""Pick a runner for a checkpoint or export directory by backend name."""

from __future__ import annotations

from pathlib import Path

from rfm.config import RobotInterface
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


def read_interface(path: str | Path, export: bool) -> tuple[RobotInterface, int]:
    """(robot interface, model.prefix_max) of a checkpoint (config.json) or an `rfm export` directory (export.json),
    read without loading the model; errors name the file."""
    if export:
        from rfm.runtime.manifest import read_manifest

        manifest = read_manifest(path)
        return RobotInterface.from_dict(manifest["interface"]), int(manifest.get("prefix_max") or 0)
    from rfm.model.serialization import read_config

    config = read_config(path)[0]
    return config.interface, config.model.prefix_max
