"""The optimizers a task can pick by name (``--optimizer``), with their default settings."""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 1e-2}
ADAMW_GRADIENT_CLIP = 5.0  # the image tasks' AdamW runs (classifiers, MAE, autoencoders, GMS); segmentation clips at 12


def make_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    """nnU-Net's SGD (Nesterov, momentum 0.99) or AdamW."""
    if name == "sgd":
        return torch.optim.SGD(parameters, learning_rate, momentum=0.99, nesterov=True, weight_decay=DEFAULT_WEIGHT_DECAY["sgd"])
    return torch.optim.AdamW(parameters, learning_rate, weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])


def poly_learning_rate(optimizer: torch.optim.Optimizer, initial: float, progress: float, exponent: float = 0.9) -> None:
    """nnU-Net's polynomial decay: ``initial * (1 - progress) ** 0.9``."""
    for group in optimizer.param_groups:
        group["lr"] = initial * (1 - progress) ** exponent


def parameter_groups(network: torch.nn.Module, weight_decay: float, layer_decay: float, exclude: set[str] = frozenset()) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings; learning-rate scale layer_decay ** (depth from the head).
    ``exclude``: parameter names another optimizer owns (the gates, under gradient routing)."""
    layer_id = getattr(network, "layer_id", None)
    num_layers = (max(layer_id(n) for n, _ in network.named_parameters()) + 1) if layer_id else 1
    groups: dict[tuple, dict] = {}
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad or name in exclude:
            continue
        no_decay = parameter.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        layer = layer_id(name) if layer_id else 0
        scale = layer_decay ** (num_layers - 1 - layer) if layer_id else 1.0
        key = (layer, no_decay)
        group = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale})
        group["params"].append(parameter)
    return list(groups.values())
