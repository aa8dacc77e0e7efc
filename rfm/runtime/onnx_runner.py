"""OnnxRunner: an `rfm export` directory run with onnxruntime + tokenizers. Never imports torch.

Same interface as TorchRunner (validation and batching come from the shared Runner.make_batch), so the server
and `rfm eval` cannot tell them apart. Instruction features come from instructions.npz when the instruction
is in that table, else from text_encoder.onnx, and are kept in an LRU cache (rfm.runtime.export_runner, shared
with OpenVinoRunner).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rfm.install import pip_install
from rfm.runtime.export_runner import ExportRunner, Graph
from rfm.runtime.manifest import load_or_explain

# Short names accepted for `providers`, mapped to onnxruntime execution providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def import_onnxruntime():
    """The onnxruntime module, or an error saying how to install it. Its telemetry is off: onnxruntime keeps a
    store of events (device id, OS, Python path) under ~/.cache/Microsoft and sends them where the network lets it;
    a robot's server and a device have no business doing that."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ModuleNotFoundError(
            f"the ONNX backend needs the onnxruntime package, which is not installed ({e}): {pip_install('edge')} "
            f"on a device that runs exports ('edge,server' to serve them there), or the extra 'serve' for the server",
            name="onnxruntime") from None
    if hasattr(onnxruntime, "disable_telemetry_events"):
        onnxruntime.disable_telemetry_events()
    return onnxruntime


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """onnxruntime provider names (CPU when None), each checked against what this onnxruntime build has."""
    ort = import_onnxruntime()

    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p]
    available = ort.get_available_providers()
    out = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.lower(), p)
        if name not in available:
            raise ValueError(
                f"execution provider {p!r} is not available in this onnxruntime build "
                f"(available: {available}); install the matching onnxruntime package"
            )
        out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")  # fallback for ops the accelerator does not take
    return out


class OnnxRunner(ExportRunner):
    """Runs an `rfm export` directory (policy.onnx + export.json) with onnxruntime; TorchRunner's interface."""

    backend = "onnx"

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str] | str | None = None,
        intra_op_threads: int | None = None,
        cache_size: int | None = None,
        resize_images: bool = False,
        seed: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        ort = import_onnxruntime()

        self.providers = resolve_providers(providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        if not allow_spinning:  # idle pool threads yield the CPU at once (cores shared with other work)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def load_graph(path: Path) -> Graph:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
            return lambda feed: session.run(None, feed)[0]

        super().__init__(export_dir, load_graph, cache_size, resize_images, seed)
        policy_path = self.export_file(self.manifest["policy"], "the policy graph")
        self.session = load_or_explain(policy_path, "the policy graph", lambda p: ort.InferenceSession(
            str(p), sess_options=opts, providers=self.providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.check_inputs()

    @classmethod
    def from_dir(
        cls, export_dir: str | Path, providers: Sequence[str] | str | None = None, **kw
    ) -> OnnxRunner:
        """Load an `rfm export` directory; providers: None (CPU) or names like ["cuda"] / "openvino,cpu"."""
        return cls(export_dir, providers=providers, **kw)

    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None):
        feed = self.policy_feed(images, state, text, text_mask, noise, prefix, prefix_len)
        return self.session.run(["actions"], feed)[0]

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers}
