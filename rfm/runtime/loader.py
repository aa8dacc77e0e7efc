"""Pick a runner for a checkpoint or export directory by backend name."""

from __future__ import annotations

from pathlib import Path

from rfm.config import RobotInterface
from rfm.constants import BACKENDS
from rfm.runtime.base import Runner


def resolve_backend(path: str | Path, backend: str | None = "auto") -> str:
    """`backend` as given; for None or "auto", the one the directory is for: an `rfm export` directory runs on
    ONNX Runtime (on OpenVINO when it was exported with --target openvino), a checkpoint on PyTorch."""
    if backend not in (None, "auto"):
        return backend
    from rfm.runtime.manifest import EXPORT_FILE, read_manifest

    if not (Path(path) / EXPORT_FILE).is_file():
        return "torch"
    manifest = read_manifest(path)  # errors name the file
    return "openvino" if manifest.get("target") == "openvino" and manifest.get("openvino") else "onnx"


def load_runner(path: str | Path, backend: str = "auto", device: str = "auto", **kw) -> Runner:
    """The runner for a checkpoint or `rfm export` directory: `backend` "auto" picks by directory (TorchRunner for a
    checkpoint, OnnxRunner for an export, OpenVinoRunner for an export with an OpenVINO IR); "torch", "onnx" or
    "openvino" asks for that one."""
    from rfm.config import did_you_mean

    backend = resolve_backend(path, backend)
    if backend == "torch":
        from rfm.runtime.torch_runner import TorchRunner

        return TorchRunner.from_checkpoint(path, device=device, **kw)
    if backend == "onnx":
        from rfm.runtime.onnx_runner import OnnxRunner

        return OnnxRunner.from_dir(path, **kw)
    if backend == "openvino":
        from rfm.runtime.openvino_runner import OpenVinoRunner

        return OpenVinoRunner.from_dir(path, **kw)
    raise ValueError(f"backend={backend!r}: expected auto or one of {BACKENDS}.{did_you_mean(backend, list(BACKENDS))}")


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
