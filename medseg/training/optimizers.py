"""The optimizers a task can pick by name (``--optimizer``), with their default settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 1e-2}


def make_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    """nnU-Net's SGD (Nesterov, momentum 0.99) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(parameters, learning_rate, momentum=0.99, nesterov=True, weight_decay=DEFAULT_WEIGHT_DECAY["sgd"])
    return torch.optim.AdamW(parameters, learning_rate, weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])


def poly_learning_rate(optimizer: torch.optim.Optimizer, initial: float, progress: float, exponent: float = 0.9) -> None:
    """nnU-Net's polynomial decay: ``initial * (1 - progress) ** 0.9``."""
    for group in optimizer.param_groups:
        group["lr"] = initial * (1 - progress) ** exponent
