"""Learning-rate schedules as factors of the planned training progress in [0, 1]: the loop sets
every optimizer group's rate to ``run.learning_rate * group["lr_scale"] * schedule(progress)``."""

from __future__ import annotations

import math
from functools import partial


def poly(progress: float, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial decay: ``(1 - progress) ** 0.9``."""
    return (1 - progress) ** exponent


def warmup_cosine(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction (never exactly 0), then cosine decay to 0."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1 - warmup, 1e-6))))


def warmup_then_cosine(warmup: float):
    """``warmup_cosine`` with its warm-up fixed: a run's ``schedule``."""
    return partial(warmup_cosine, warmup=warmup)
