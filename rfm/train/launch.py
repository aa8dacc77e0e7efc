"""Where this process stands in a run started by a launcher (torchrun, accelerate launch), read from the environment
they set, so the CLI can ask before any torch import."""

from __future__ import annotations

import os


def first_process() -> bool:
    """Rank 0 of the run (or a run of one process): it holds the run lock, saves, and reports."""
    return os.environ.get("RANK", "0") == "0"


def local_processes() -> int:
    """Training processes on this machine (1 when run alone): the decoded-frame budget is shared by all of them."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cpu_only() -> bool:
    """No GPU or other accelerator: accelerate then runs a launcher's processes as one multi-process CPU run (gloo)
    instead of as independent copies writing the same checkpoint."""
    import torch

    return not torch.accelerator.is_available()
