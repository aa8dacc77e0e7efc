"""The Runner interface: numpy observations in, numpy action chunks out, whatever the backend.

Pre-processing (validation, batching), text features and flow noise are shared here, so TorchRunner and
OnnxRunner differ only in `_forward`, and the server and `rfm eval` never know which one they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfm.config import RobotInterface
from rfm.runtime.observation import Batch, check_observation_shape, make_batch, resolve_instruction
from rfm.runtime.snap import InstructionSnapper


class Runner(ABC):
    """Runs a policy on observations. Subclasses implement `_forward` and `encode_text`."""

    backend: str = "abstract"
    engine: str | None = None  # how `rfm serve` runs a checkpoint (rfm.export.engine): torch | onnx | onnx-int8
    engine_dir: str | None = None  # the cached export an onnx engine runs
    prefix_max: int = 0  # most committed actions a request may carry (model.prefix_max; 0: none)
    execution: dict | None = None  # the recommended actions per request (rfm.runtime.execution; None: none)
    default_instruction: str | None = None  # run for an observation without one (rfm serve --default-instruction)

    def __init__(self, interface: RobotInterface, head: str, model_id: str, model_version: str,
                 resize_images: bool = False, seed: int | None = None) -> None:
        self.interface, self.head = interface, head
        self.model_id, self.model_version = model_id, model_version
        self.resize_images = resize_images
        self.rng = np.random.default_rng(seed)
        self.trained_instructions: list[str] = []  # as the checkpoint/export records them (subclasses fill it)
        self.snapper: InstructionSnapper | None = None

    # --- to implement ----------------------------------------------------------------------------------------
    @abstractmethod
    def encode_text(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features (B, L, D_text) float32, mask (B, L) bool)."""

    @abstractmethod
    def _forward(self, images: np.ndarray, state: np.ndarray, text: np.ndarray, text_mask: np.ndarray,
                 noise: np.ndarray | None, prefix: np.ndarray | None = None,
                 prefix_len: np.ndarray | None = None) -> np.ndarray:
        """images (B, N, 3, H, W) uint8, state (B, D_s) float32 -> actions (B, H, D_a) float32.
        prefix (B, prefix_max, D_a) float32 / prefix_len (B,) int64: committed actions (None: no row has any)."""

    # --- shared ----------------------------------------------------------------------------------------------
    def make_batch(self, observations: Sequence[Mapping[str, Any]]) -> Batch:
        batch = make_batch(list(observations), self.interface, resize=self.resize_images, prefix_max=self.prefix_max)
        batch.instructions = [self.instruction_for(t, f"observation[{i}]: " if len(batch) > 1 else "")
                              for i, t in enumerate(batch.instructions)]
        return batch

    def instruction_for(self, text: str, where: str = "") -> str:
        """The instruction to run for `text` (rfm.runtime.observation.resolve_instruction): an empty one becomes
        the default instruction or the model's only one; ObservationError where the model cannot tell."""
        return resolve_instruction(text, self.trained_instructions, self.default_instruction, where)

    def sample_noise(self, batch_size: int) -> np.ndarray | None:
        """Standard normal noise (B, H, D_a) for the flow head; None for the chunk head."""
        if self.head != "flow":
            return None
        return self.rng.standard_normal((batch_size, self.interface.chunk_size, self.interface.action_dim)
                                        ).astype(np.float32)

    def snap_instructions(self, threshold: float) -> InstructionSnapper:
        """From now on, an untrained instruction whose embedding is within `threshold` cosine similarity of a
        trained one is replaced by it (rfm.runtime.snap); returns the snapper (its `match` explains a mapping)."""
        self.snapper = InstructionSnapper(self.trained_instructions, self.encode_text, threshold)
        return self.snapper

    def predict_batch(self, batch: Batch, noise: np.ndarray | None = None) -> np.ndarray:
        """Action chunks (B, H, D_a) float32 in robot units for a validated batch."""
        instructions = self.snapper(batch.instructions) if self.snapper else batch.instructions
        text, mask = self.encode_text(instructions)
        if noise is None:
            noise = self.sample_noise(len(batch))
        elif noise.shape != (len(batch), self.interface.chunk_size, self.interface.action_dim):
            raise ValueError(f"noise has shape {noise.shape}, expected "
                             f"({len(batch)}, {self.interface.chunk_size}, {self.interface.action_dim})")
        out = self._forward(batch.images, batch.state, text, mask, noise, batch.prefix, batch.prefix_len)
        return np.asarray(out, dtype=np.float32)

    def predict(self, obs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                noise: np.ndarray | None = None) -> np.ndarray:
        """One observation dict -> (H, D_a); a list of them -> (B, H, D_a)."""
        single = isinstance(obs, Mapping)
        batch = self.make_batch([obs] if single else obs)
        if single and noise is not None and noise.ndim == 2:
            noise = noise[None]
        out = self.predict_batch(batch, noise)
        return out[0] if single else out

    def check_observation(self, obs: Mapping[str, Any]) -> None:
        """ObservationError for an observation predict() would refuse, without fitting its frames (microseconds):
        ChunkExecutor asks on the tick that requests a chunk, so a bad frame raises on its own tick."""
        check_observation_shape(obs, self.interface, self.resize_images)

    def dummy_observation(self, instruction: str = "warm up") -> dict:
        """A valid observation of zeros, for warm-up and smoke tests."""
        h, w = self.interface.image_size
        return {"images": {c: np.zeros((h, w, 3), np.uint8) for c in self.interface.cameras},
                "state": np.zeros(self.interface.state_dim, np.float32), "instruction": instruction}

    @property
    def recorded_name(self) -> str:
        """What a recording names this model by (each episode's `model`, `rfm data info`'s by-model counts):
        id@version, and an export's precision where it is not fp32, so a fleet's int8 and fp32 runs compare."""
        precision = getattr(self, "precision", "fp32")
        return f"{self.model_id}@{self.model_version}" + ("" if precision in (None, "fp32") else f"/{precision}")

    @property
    def runs_on(self) -> str:
        """The engine serving this runner, for logs and metrics: its engine where `rfm serve` chose one, else its
        backend."""
        return self.engine or self.backend

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run once per batch size so allocations, kernels and caches are ready before traffic."""
        for b in batch_sizes:
            self.predict([self.dummy_observation()] * b)

    def describe(self) -> dict:
        """Robot interface and model identity, as served by GET /v1/models."""
        itf = self.interface.to_dict()
        return {**itf, "model_id": self.model_id, "model_version": self.model_version, "head": self.head,
                "backend": self.backend, "engine": self.runs_on, "engine_dir": self.engine_dir,
                "prefix_max": self.prefix_max, "execution": self.execution,
                "snap_instructions": self.snapper.describe() if self.snapper else None}


@dataclass
class StagedRunner:
    """A runner to serve at once and a faster one to switch to when built: `rfm serve`'s first start of a checkpoint
    on a CPU serves it on PyTorch while the ONNX Runtime engine is exported (rfm.export.engine), then moves to it."""

    first: Runner
    then: Callable[[], Runner]  # builds the runner to switch to; raises when it cannot (the server keeps `first`)
    what: str  # what `then` builds, for the log
    engine: str = "onnx"  # the engine `then` serves on: GET /v1/models says it is coming (server.engine_next)
