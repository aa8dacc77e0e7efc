"""OnnxRunner: an `rfm export` directory run with onnxruntime + tokenizers. Never imports torch.

Same interface as TorchRunner (validation and batching come from the shared Runner.make_batch), so the server
and `rfm eval` cannot tell them apart. Instruction features come from instructions.npz when the instruction
is in that table, else from text_encoder.onnx, and are kept in an LRU cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rfm.config import RobotInterface
from rfm.model.text_cache import CachedTextEncoder, InstructionCache
from rfm.runtime.base import Runner
from rfm.runtime.manifest import read_manifest

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


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """onnxruntime provider names (CPU when None), each checked against what this onnxruntime build has."""
    import onnxruntime as ort

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


class OnnxTextEncoder(CachedTextEncoder):
    """Tokenise with `tokenizers`, encode with text_encoder.onnx or the instruction table; thread-safe LRU."""

    def __init__(
        self, export_dir: Path, text: dict, providers: list[str], cache_size: int = 4096, session_options=None
    ) -> None:
        self.max_tokens, self.dim, self.cache_size = int(text["max_tokens"]), int(text["dim"]), cache_size
        self.table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if text.get("instructions"):
            path = export_dir / text["instructions"]["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing (listed in export.json text.instructions)")
            with np.load(path, allow_pickle=False) as z:
                for i, s in enumerate(z["instructions"].tolist()):
                    self.table[s] = (z["features"][i].astype(np.float32), z["mask"][i].astype(bool))
        self.session = self.tokenizer = None
        if text.get("graph"):
            import onnxruntime as ort
            from tokenizers import Tokenizer

            graph, tok_file = export_dir / text["graph"], export_dir / "tokenizer.json"
            for f in (graph, tok_file):
                if not f.exists():
                    raise FileNotFoundError(f"{f}: missing (export.json lists a text encoder graph)")
            self.session = ort.InferenceSession(str(graph), sess_options=session_options, providers=providers)
            tk = text.get("tokenizer", {})
            self.tokenizer = Tokenizer.from_file(str(tok_file))
            self.tokenizer.enable_truncation(max_length=self.max_tokens)
            self.tokenizer.enable_padding(
                length=self.max_tokens,
                pad_id=int(tk.get("pad_id", 0)),
                pad_token=str(tk.get("pad_token", "[PAD]")),
                pad_type_id=int(tk.get("pad_type_id", 0)),
            )
        self.cache = InstructionCache(self.max_tokens, self.dim, cache_size)

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids (B, max_tokens) int64, like TextEncoder.tokenize."""
        if self.tokenizer is None:
            raise ValueError(
                "this export has no text encoder graph; only instructions in instructions.npz work"
            )
        enc = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        }

    def _encode_uncached(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {t: self.table[t] for t in texts if t in self.table}
        rest = [t for t in texts if t not in out]
        if rest:
            if self.session is None:
                raise ValueError(
                    f"instruction {rest[0]!r} is not in this export's instruction table "
                    f"{sorted(self.table)} and the export has no text encoder graph"
                )
            tok = self.tokenize(rest)
            feats = self.session.run(["features"], tok)[0].astype(np.float32)  # (B, L, D_text)
            out.update({t: (feats[i], tok["attention_mask"][i].astype(bool)) for i, t in enumerate(rest)})
        return [out[t] for t in texts]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features (B, L, D_text) float32, mask (B, L) bool)."""
        return self.cache.encode(list(texts), self._encode_uncached)


class OnnxRunner(Runner):
    """Runs an `rfm export` directory (policy.onnx + export.json) with onnxruntime; TorchRunner's interface."""

    backend = "onnx"

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str] | str | None = None,
        intra_op_threads: int | None = None,
        cache_size: int = 4096,
        resize_images: bool = False,
        seed: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.export_dir = Path(export_dir)
        self.manifest = m = read_manifest(self.export_dir)
        super().__init__(
            RobotInterface.from_dict(m["interface"]),
            m["head"],
            m["model_id"],
            m["model_version"],
            resize_images,
            seed,
        )
        self.precision, self.target = m["precision"], m["target"]
        self.providers = resolve_providers(providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        if not allow_spinning:  # idle pool threads yield the CPU at once (cores shared with other work)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        policy_path = self.export_dir / m["policy"]
        if not policy_path.exists():
            raise FileNotFoundError(f"{policy_path}: missing (listed in export.json as the policy graph)")
        self.session = ort.InferenceSession(str(policy_path), sess_options=opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.text = OnnxTextEncoder(self.export_dir, m["text"], self.providers, cache_size, opts)
        self.trained_instructions = list(m.get("trained_instructions", []))

    @classmethod
    def from_dir(
        cls, export_dir: str | Path, providers: Sequence[str] | str | None = None, **kw
    ) -> OnnxRunner:
        """Load an `rfm export` directory; providers: None (CPU) or names like ["cuda"] / "openvino,cpu"."""
        return cls(export_dir, providers=providers, **kw)

    def encode_text(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.text.encode(list(instructions))

    def dummy_observation(self, instruction: str = "warm up") -> dict:
        """As Runner's; an export without a text graph knows only its table, so it warms up on a table entry."""
        if self.text.session is None and self.text.table and instruction not in self.text.table:
            instruction = next(iter(self.text.table))
        return super().dummy_observation(instruction)

    def _forward(self, images, state, text, text_mask, noise):
        feed = {
            "images": np.ascontiguousarray(images, np.uint8),
            "state": np.ascontiguousarray(state, np.float32),
            "text": np.ascontiguousarray(text, np.float32),
            "text_mask": text_mask.astype(np.float32),
        }
        if "noise" in self.input_names:
            feed["noise"] = np.ascontiguousarray(noise, np.float32)
        return self.session.run(["actions"], feed)[0]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "precision": self.precision,
            "target": self.target,
            "providers": self.providers,
        }
