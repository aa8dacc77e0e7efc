"""OpenVinoRunner: an `rfm export --target openvino` directory (policy.xml + policy.bin) run with OpenVINO.

Never imports torch. Same interface as OnnxRunner and TorchRunner; the manifest, the instruction table, the
tokenizer and the text-feature cache are OnnxRunner's (rfm.runtime.export_runner). The text encoder graph
(text_encoder.onnx) is compiled by OpenVINO too, so a device needs openvino + tokenizers and no onnxruntime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from rfm.install import pip_install
from rfm.runtime.export_runner import ExportRunner, Graph
from rfm.runtime.manifest import load_or_explain

INSTALL_HINT = f"{pip_install('export')} (a device that only runs exports: {pip_install('edge')} openvino)"


def import_openvino():
    """The openvino module, or an error saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ModuleNotFoundError(
            f"the OpenVINO backend needs the openvino package, which is not installed ({e}): {INSTALL_HINT}",
            name="openvino",
        ) from None
    return openvino


def openvino_version() -> str:
    """e.g. "openvino 2026.4.1" (the release, without the build suffix)."""
    return f"openvino {import_openvino().__version__.split('-')[0]}"


def compile_config(device: str, threads: int | None = None) -> dict:
    """Compile settings: lowest latency; on the CPU, fp32 arithmetic (OpenVINO would pick bf16 on CPUs with AMX
    or AVX512-BF16, outside the 1e-4 fp32 parity goal)."""
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class CompiledGraph:
    """A compiled OpenVINO model as a function feed -> first output; one infer request per calling thread.

    Inputs are matched by any of their tensor names: OpenVINO may give an input several (the ONNX input `state`
    also carries the names of the nodes it was folded into) and `get_any_name()` need not be the ONNX one.
    """

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.names = [set(i.get_names()) for i in compiled.inputs]  # per input port, in order
        self.input_names = sorted(set().union(*self.names))
        self._local = threading.local()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {}
        for port, names in enumerate(self.names):
            key = next((k for k in feed if k in names), None)
            if key is None:  # an unset input would run on an empty tensor
                raise ValueError(f"feed has no input {sorted(names)} (got {sorted(feed)})")
            inputs[port] = feed[key]
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request.infer(inputs)[0]


def graph_loader(device: str = "CPU", threads: int | None = None):
    """A GraphLoader compiling IR (.xml) or ONNX files with OpenVINO on `device`."""
    ov = import_openvino()
    core, config = ov.Core(), compile_config(device, threads)

    def load(path: Path) -> Graph:
        return CompiledGraph(core.compile_model(str(path), device, config))

    return load


class OpenVinoRunner(ExportRunner):
    """Runs the OpenVINO IR of an `rfm export --target openvino` directory; TorchRunner's interface."""

    backend = "openvino"

    def __init__(
        self,
        export_dir: str | Path,
        device: str = "CPU",
        intra_op_threads: int | None = None,
        cache_size: int | None = None,
        resize_images: bool = False,
        seed: int | None = None,
    ) -> None:
        self.device = device.upper()
        load = graph_loader(self.device, intra_op_threads)
        super().__init__(export_dir, load, cache_size, resize_images, seed)
        ir = self.manifest.get("openvino")
        if not ir:
            raise ValueError(
                f"{self.export_dir}: export.json lists no OpenVINO IR; export with "
                "`rfm export --target openvino` (or run this directory with --backend onnx)"
            )
        self.export_file(ir["weights"], "the OpenVINO IR weights")
        self.policy = load_or_explain(self.export_file(ir["model"], "the OpenVINO IR"), "the OpenVINO IR", load)
        self.input_names = self.policy.input_names
        self.check_inputs()
        self.openvino = openvino_version()

    @classmethod
    def from_dir(cls, export_dir: str | Path, **kw) -> OpenVinoRunner:
        """Load an `rfm export --target openvino` directory; device: "CPU" (default), "GPU", "NPU"."""
        return cls(export_dir, **kw)

    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None):
        return self.policy(self.policy_feed(images, state, text, text_mask, noise, prefix, prefix_len))

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device, "runtime": self.openvino}
