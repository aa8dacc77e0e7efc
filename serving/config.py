"""Server settings: one dataclass, filled by `rfm serve` flags or by tests, validated up front."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import rfm
from rfm.config import ConfigError
from rfm.constants import ACTION_LIMIT_MARGIN

DEFAULT_CHECKPOINT_ENV = "RFM_CHECKPOINT"


def default_checkpoint() -> Path:
    """$RFM_CHECKPOINT, else `checkpoints/default/` at the repository root (next to the rfm package)."""
    env = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if env:
        return Path(env)
    return Path(rfm.__file__).resolve().parents[1] / "checkpoints" / "default"


@dataclass
class ServerConfig:
    """Batching, limits and safety settings of one server process."""

    max_batch: int = 32  # most requests run in one forward pass; 1 turns batching off
    max_wait_ms: float = 2.0  # longest a request waits for others to join its batch
    batching: str = "auto"  # auto: batch where the engine's warm-up shows a batch pays (serving.admission.BATCH_GAIN)
    queue_size: int = 256  # requests waiting for inference; beyond this, 503 + Retry-After
    timeout_ms: float = 10_000.0  # per-request deadline from arrival (504 past it)
    warmup_batch_sizes: tuple[int, ...] | None = None  # None: 1 and max_batch (and the powers of two between)
    resize_images: bool = False  # resize wrong-size images instead of rejecting them (422)
    max_body_bytes: int = 8 * 1024 * 1024  # HTTP request body limit (413)
    max_ws_message_bytes: int = 8 * 1024 * 1024  # WebSocket message limit (connection closed with 1009)
    api_keys_file: str | None = None  # one key per line; when set, /v1/* and /openpi need a key
    audit_log: str | None = None  # JSON-lines audit log path
    action_limits: str | None = None  # JSON file of per-dimension limits; else stats.json min/max with a margin
    action_limit_margin: float = ACTION_LIMIT_MARGIN  # margin added to stats min/max, as a fraction of the range
    openpi_mapping: str | None = None  # JSON file mapping openpi observation keys to cameras / state / prompt
    record_dir: str | None = None  # record served observations + actions into this LeRobot v3.0 dataset
    record_images: str = "video"  # video (h264, compact) | image (lossless PNG: small targets survive)
    record_vcodec: str | None = None  # h264 | av1; None: an existing dataset's own codec, h264 for a new one
    snap_instructions: float | None = None  # cosine threshold: untrained instructions -> nearest trained one
    default_instruction: str | None = None  # run for a request without an instruction (else the model's only one)
    record_idle_timeout_s: float = 30.0  # a robot session idle this long ends its recorded episode
    record_memory_mb: float = 1024.0  # open episodes' frames held in memory; past it they go to disk in the recording
    retry_after_s: int = 1  # Retry-After value sent with 503
    min_deadline_ms: float | None = None  # shortest deadline_ms a request may ask for; None: 5x a warm batch-1 run
    shutdown_drain_s: float = 10.0  # how long graceful shutdown waits for queued work
    max_connections: int = 1024  # open WebSockets (robots) before new ones get 503 (HTTP: bounded by queue_size)
    root_path: str = ""  # the path prefix a proxy serves this server under (e.g. /rfm): /docs finds its schema there
    forwarded_allow_ips: str | None = None  # proxies whose X-Forwarded-For names the client; None: 127.0.0.1

    def __post_init__(self) -> None:
        def check(cond: bool, name: str, expected: str) -> None:
            if not cond:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        check(1 <= self.max_batch <= 1024, "max_batch", "an integer in [1, 1024]")
        check(0 <= self.max_wait_ms <= 1000, "max_wait_ms", "milliseconds in [0, 1000]")
        check(self.batching in ("auto", "on", "off"), "batching", "auto, on or off")
        check(self.queue_size >= 1, "queue_size", "a positive integer")
        check(self.timeout_ms > 0, "timeout_ms", "a positive number of milliseconds")
        check(self.max_body_bytes >= 1024, "max_body_bytes", "at least 1024 bytes")
        check(self.max_ws_message_bytes >= 1024, "max_ws_message_bytes", "at least 1024 bytes")
        check(self.action_limit_margin >= 0, "action_limit_margin", "a non-negative fraction of the range")
        check(self.min_deadline_ms is None or 0 < self.min_deadline_ms <= self.timeout_ms, "min_deadline_ms",
              "None or milliseconds in (0, timeout_ms]")
        check(self.retry_after_s >= 0, "retry_after_s", "a non-negative number of seconds")
        check(self.max_connections >= 1, "max_connections", "a positive integer")
        check(self.root_path == "" or (self.root_path.startswith("/") and not self.root_path.endswith("/")),
              "root_path", "'' or a path such as /rfm (a leading /, no trailing /)")
        check(self.record_images in ("video", "image"), "record_images", "video or image")
        check(self.record_vcodec in (None, "h264", "av1"), "record_vcodec", "h264, av1 or None")
        check(self.record_memory_mb >= 128, "record_memory_mb", "at least 128 MB")
        check(self.default_instruction is None or bool(self.default_instruction.strip()), "default_instruction",
              "a non-empty instruction (leave it out for none)")
        check(self.snap_instructions is None or -1 <= self.snap_instructions <= 1, "snap_instructions",
              "a cosine similarity in [-1, 1] (e.g. 0.5), or None for off")

    def batch_sizes_to_warm(self) -> list[int]:
        """1, the powers of two below max_batch, and max_batch: the shapes traffic will produce most."""
        if self.warmup_batch_sizes is not None:
            return sorted(set(self.warmup_batch_sizes))
        if self.batching == "off":
            return [1]
        sizes, b = {1, self.max_batch}, 2
        while b < self.max_batch:
            sizes.add(b)
            b *= 2
        return sorted(sizes)
