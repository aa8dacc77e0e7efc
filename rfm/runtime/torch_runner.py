"""TorchRunner: eager or torch.compile'd PyTorch inference on CPU or CUDA (bf16 autocast on GPU)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from rfm.model.policy import RFMPolicy
from rfm.runtime.base import Runner
from rfm.runtime.execution import check_execution


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, policy: RFMPolicy, device: str = "auto", compile: bool = False,
                 bf16: bool | None = None, resize_images: bool = False, seed: int | None = None) -> None:
        super().__init__(policy.interface, policy.model_config.head, policy.meta.get("model_id", "rfm"),
                         policy.meta.get("model_version", "unsaved"), resize_images, seed)
        self.device = pick_device(device)
        self.policy = policy.to(self.device)
        self.prefix_max = policy.model_config.prefix_max
        self.trained_instructions = list(policy.meta.get("data", {}).get("tasks", []))
        self.execution = check_execution(policy.meta.get("execution"), policy.interface.chunk_size,
                                         "config.json meta.execution")
        self.policy.net.eval()
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        self._fn = torch.compile(self.policy.net, dynamic=True) if compile else self.policy.net
        self.compiled = compile
        if compile:
            self.backend = "torch-compile"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", **kw) -> TorchRunner:
        return cls(RFMPolicy.from_pretrained(path), device=device, **kw)

    def encode_text(self, instructions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.policy.text.encode(instructions)

    @torch.inference_mode()
    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None):
        dev = self.device
        t = lambda a: None if a is None else torch.from_numpy(a).to(dev)
        args = [t(images), t(state), t(text), t(text_mask), t(noise), t(prefix), t(prefix_len)]
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            out = self._fn(*args)
        return out.float().cpu().numpy()
