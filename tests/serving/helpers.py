"""Shared test helpers: a tiny checkpoint, fault-injecting runners, request bodies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import numpy as np

from rfm import RFMPolicy
from rfm.config import RobotInterface
from rfm.runtime import Runner, load_runner

INTERFACE = {"cameras": ["front", "wrist"], "image_size": (64, 64), "state_names": ["x", "y", "z"],
             "action_names": ["vx", "vy"], "chunk_size": 8, "control_hz": 10.0, "robot_type": "test"}


def make_checkpoint(path: Path) -> Path:
    RFMPolicy.build("tiny", interface=RobotInterface(**INTERFACE)).save_pretrained(path)
    return path


def make_prefix_checkpoint(path: Path, prefix_max: int = 4) -> Path:
    """A tiny checkpoint taking up to `prefix_max` committed actions, its prefix weights randomised (they start at
    zero by design) so that what was committed changes the rest of the chunk."""
    import torch

    torch.manual_seed(0)
    policy = RFMPolicy.build("tiny", interface=RobotInterface(**INTERFACE), prefix_max=prefix_max)
    with torch.no_grad():
        torch.nn.init.normal_(policy.net.prefix_in.weight, std=0.5)
        torch.nn.init.normal_(policy.net.prefix_embed, std=0.5)
    policy.save_pretrained(path)
    return path


def load_tiny(path: Path) -> Runner:
    return load_runner(path, backend="torch", device="cpu", seed=0)


class FaultyRunner(Runner):
    """Delegates to a real runner; can be armed to raise for the next n batches, to sleep per batch, or to hold each
    batch until `hold` (an Event) is set, so requests queue behind a busy worker however fast the machine is."""

    backend = "torch-faulty"

    def __init__(self, inner: Runner, delay_s: float = 0.0, per_item_s: float = 0.0) -> None:
        super().__init__(inner.interface, inner.head, inner.model_id, inner.model_version)
        self.inner, self.delay_s, self.failures = inner, delay_s, 0
        self.per_item_s = per_item_s  # a batch costs this per request more: a CPU, where a batch of B ~ B runs
        self.prefix_max = inner.prefix_max
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()  # set when a batch reaches the model
        self.hold: threading.Event | None = None
        self._lock = threading.Lock()

    def arm(self, failures: int) -> None:
        with self._lock:
            self.failures = failures

    def encode_text(self, instructions):
        return self.inner.encode_text(instructions)

    def _forward(self, images, state, text, text_mask, noise, prefix=None, prefix_len=None):
        self.batch_sizes.append(images.shape[0])
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        with self._lock:
            fail = self.failures > 0
            self.failures -= int(fail)
        if fail:
            raise RuntimeError("injected failure: /secret/path/model.py line 42")
        if self.delay_s or self.per_item_s:
            time.sleep(self.delay_s + self.per_item_s * images.shape[0])
        return self.inner._forward(images, state, text, text_mask, noise, prefix, prefix_len)


def observation(rng: np.random.Generator | None = None, instruction: str = "pick up the cube") -> dict:
    rng = rng or np.random.default_rng(0)
    h, w = INTERFACE["image_size"]
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in INTERFACE["cameras"]},
            "state": rng.standard_normal(3).astype(np.float32), "instruction": instruction}


def msgpack_body(obs: dict, **extra) -> bytes:
    images = {c: {"data": v.tobytes(), "shape": list(v.shape), "dtype": "uint8"} for c, v in obs["images"].items()}
    return msgpack.packb({"images": images, "state": [float(x) for x in obs["state"]],
                          "instruction": obs["instruction"], **extra}, use_bin_type=True)


def json_body(obs: dict, **extra) -> dict:
    return {"images": {c: v.tolist() for c, v in obs["images"].items()},
            "state": [float(x) for x in obs["state"]], "instruction": obs["instruction"], **extra}


def wait_until_ready(proc, url: str, timeout_s: float = 90.0) -> None:
    """Poll /readyz of an `rfm serve` subprocess until 200; fail with its output if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready in {timeout_s:g} s"
        time.sleep(0.2)


def gated_loader(runner: Runner, timeout_s: float = 10.0):
    """(loader, gate): a runner loader that returns `runner` once `gate` is set (a model still loading)."""
    gate = threading.Event()

    def load() -> Runner:
        gate.wait(timeout_s)
        return runner

    return load, gate


def audit_record(path, request_id: str, timeout_s: float = 10.0) -> dict | None:
    """The audit log's record of `request_id` once the audit thread has written it (None after timeout_s)."""
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        found = next((json.loads(ln) for ln in lines if f'"{request_id}"' in ln), None)
        if found is not None:
            return found
        time.sleep(0.05)
    return None
