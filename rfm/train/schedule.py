"""The learning-rate schedule: linear warm-up from 0, then a half cosine to 0 at the last step.

A LambdaLR over a plain function (functools.partial), so its saved state holds no step counts: a run resumed on
another number of processes builds the schedule for its own count and keeps it (rfm.train.loop)."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """The factor on the base learning rate at scheduler step `step`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(optimizer: Optimizer, warmup: int, total: int) -> LambdaLR:
    """`warmup` steps rising linearly from 0 to the base rate, then cosine decay to 0 at `total`."""
    return LambdaLR(optimizer, partial(warmup_cosine_factor, warmup=warmup, total=total))
