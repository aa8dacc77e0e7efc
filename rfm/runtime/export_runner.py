"""What every runner of an `rfm export` directory shares, whatever runs its graphs: export.json, the robot
interface, the instruction features (instructions.npz, else the text graph + tokenizer.json) and the policy feed.

A backend (OnnxRunner, OpenVinoRunner) supplies only how a graph file is loaded and run: `GraphLoader(path)`
returns a function from a feed ({input name: array}) to the graph's first output. Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rfm.config import RobotInterface
from rfm.model.text_cache import CachedTextEncoder, InstructionCache
from rfm.model.tokenizer import FastTokenizer
from rfm.runtime.base import Runner
from rfm.runtime.execution import check_execution
from rfm.runtime.manifest import EXPORT_FILE, load_or_explain, parity_summary, read_manifest
from rfm.runtime.observation import no_committed

Graph = Callable[[dict[str, np.ndarray]], np.ndarray]  # feed -> first output
GraphLoader = Callable[[Path], Graph]
log = logging.getLogger("rfm.runtime")


def _read_table(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        return {s: (z["features"][i].astype(np.float32), z["mask"][i].astype(bool))
                for i, s in enumerate(z["instructions"].tolist())}


class ExportTextEncoder(CachedTextEncoder):
    """Tokenise with `tokenizers`, encode with the export's text graph or its instruction table; thread-safe LRU."""

    def __init__(self, export_dir: Path, text: dict, load_graph: GraphLoader, cache_size: int | None = None) -> None:
        self.max_tokens, self.dim, self.cache_size = int(text["max_tokens"]), int(text["dim"]), cache_size
        self.table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if text.get("instructions"):
            path = export_dir / text["instructions"]["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing (listed in export.json text.instructions)")
            self.table = load_or_explain(path, "the instruction table", _read_table)
        self.graph: Graph | None = None
        self.tokenizer: FastTokenizer | None = None
        if text.get("graph"):
            graph, tok_file = export_dir / text["graph"], export_dir / "tokenizer.json"
            for f in (graph, tok_file):
                if not f.exists():
                    raise FileNotFoundError(f"{f}: missing (export.json lists a text encoder graph)")
            self.graph = load_or_explain(graph, "the text encoder graph", load_graph)
            tk = text.get("tokenizer", {})
            self.tokenizer = load_or_explain(
                tok_file, "the tokenizer", lambda _: FastTokenizer(export_dir, self.max_tokens,
                                                                   pad_token=str(tk.get("pad_token", "[PAD]")),
                                                                   pad_type_id=int(tk.get("pad_type_id", 0))))
        self.cache = InstructionCache(self.max_tokens, self.dim, cache_size)

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids (B, max_tokens) int64, like TextEncoder.tokenize."""
        if self.tokenizer is None:
            raise ValueError(
                "this export has no text encoder graph; only instructions in instructions.npz work"
            )
        return self.tokenizer(texts)

    def _encode_uncached(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {t: self.table[t] for t in texts if t in self.table}
        rest = [t for t in texts if t not in out]
        if rest:
            if self.graph is None:
                raise ValueError(
                    f"instruction {rest[0]!r} is not in this export's instruction table "
                    f"{sorted(self.table)} and the export has no text encoder graph"
                )
            tok = self.tokenize(rest)
            feats = np.asarray(self.graph(tok), np.float32)  # (B, L, D_text)
            out.update({t: (feats[i], tok["attention_mask"][i].astype(bool)) for i, t in enumerate(rest)})
        return [out[t] for t in texts]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features (B, L, D_text) float32, mask (B, L) bool)."""
        return self.cache.encode(list(texts), self._encode_uncached)


def policy_feed(images, state, text, text_mask, noise, input_names, prefix=None, prefix_len=None,
                prefix_max: int = 0, action_dim: int = 0) -> dict[str, np.ndarray]:
    """The policy graph's feed: images (B, N, 3, H, W) uint8, state (B, D_s) f32, text (B, L, D_text) f32,
    text_mask (B, L) f32 (1 = token), noise (B, H, D_a) f32 when the graph takes it (flow head), and when the graph
    takes committed actions (export.json prefix_max > 0) prefix (B, prefix_max, D_a) f32 / prefix_len (B,) int64:
    `prefix` zero-padded to prefix_max, zeros and 0 (no committed action) when None."""
    feed = {
        "images": np.ascontiguousarray(images, np.uint8),
        "state": np.ascontiguousarray(state, np.float32),
        "text": np.ascontiguousarray(text, np.float32),
        "text_mask": text_mask.astype(np.float32),
    }
    if "noise" in input_names:
        feed["noise"] = np.ascontiguousarray(noise, np.float32)
    if "prefix" in input_names:
        b = feed["images"].shape[0]
        full, lens = no_committed(b, prefix_max, action_dim)
        if prefix is not None:
            p = np.asarray(prefix, np.float32)
            if p.ndim != 3 or p.shape[0] != b or p.shape[1] > prefix_max or p.shape[2] != action_dim:
                raise ValueError(f"prefix has shape {p.shape}, expected ({b}, <= {prefix_max}, {action_dim})")
            full[:, : p.shape[1]] = p
            if prefix_len is not None:
                lens = np.asarray(prefix_len, np.int64).reshape(b).clip(0, p.shape[1])
        feed["prefix"], feed["prefix_len"] = full, lens
    return feed


class ExportRunner(Runner):
    """A Runner over an export directory; subclasses load the policy graph and implement `_forward`."""

    def __init__(self, export_dir: str | Path, load_graph: GraphLoader, cache_size: int | None = None,
                 resize_images: bool = False, seed: int | None = None) -> None:
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
        self.engine_dir = str(self.export_dir)  # what runs: GET /v1/models and the ready line say where it is
        self.prefix_max = int(m.get("prefix_max") or 0)  # absent in exports from before delay-aware continuation
        self.text = ExportTextEncoder(self.export_dir, m["text"], load_graph, cache_size)
        self.trained_instructions = list(m.get("trained_instructions", []))
        self.execution = check_execution(m.get("execution"), self.interface.chunk_size,
                                         f"{self.export_dir / EXPORT_FILE}: execution")
        self.parity = parity_summary(m.get("parity"))
        synthetic = str(m.get("calibration", "")).startswith("synthetic")
        check = (f"Check it on your robot's episodes (rfm eval --checkpoint {self.export_dir} --dataset DATA) or in "
                 f"simulation (rfm eval --checkpoint {self.export_dir} --tasks ...)")
        if self.parity and self.parity["met"] is False:
            again = ("; or export again " + ("with your robot's frames (--calib-dataset; it was calibrated on synthetic ones) or "
                                           if synthetic else "with ")
                     + "blocks kept in float (--keep-fp32)") if self.precision == "int8" else ""
            log.warning("%s: this %s export missed its parity goal against PyTorch when exported (%s %.3g > %g): "
                        "its actions may differ from the checkpoint's (export.json parity has the error per action "
                        "dimension). %s%s", self.export_dir / EXPORT_FILE, self.precision, self.parity["metric"],
                        self.parity["value"], self.parity["limit"], check, again)
        elif synthetic:
            log.warning("%s: this int8 export was calibrated and checked on synthetic frames, so its error on real "
                        "ones is unknown (on a 3-camera arm it was the worst of every export). Export again with "
                        "your robot's frames (--calib-dataset DATA), or: %s", self.export_dir / EXPORT_FILE, check)

    def policy_feed(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None) -> dict:
        """The feed of this export's policy graph (its input names: self.input_names, set by the subclass)."""
        return policy_feed(images, state, text, text_mask, noise, self.input_names, prefix, prefix_len,
                           self.prefix_max, self.interface.action_dim)

    def check_inputs(self) -> None:
        """The policy graph takes committed actions exactly when export.json says the model does."""
        has = "prefix" in self.input_names and "prefix_len" in self.input_names
        if has != bool(self.prefix_max):
            raise ValueError(f"{self.export_dir}: export.json says prefix_max={self.prefix_max} but the policy graph "
                             f"{'has' if has else 'lacks'} the prefix / prefix_len inputs (inputs: "
                             f"{sorted(self.input_names)}); re-export the checkpoint")

    def export_file(self, name: str, what: str) -> Path:
        """A file of the export directory that export.json lists, or an error naming it."""
        path = self.export_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (listed in export.json as {what})")
        return path

    def encode_text(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.text.encode(list(instructions))

    def dummy_observation(self, instruction: str = "warm up") -> dict:
        """As Runner's; an export without a text graph knows only its table, so it warms up on a table entry."""
        if self.text.graph is None and self.text.table and instruction not in self.text.table:
            instruction = next(iter(self.text.table))
        return super().dummy_observation(instruction)

    def describe(self) -> dict:
        return {**super().describe(), "precision": self.precision, "target": self.target, "parity": self.parity}
