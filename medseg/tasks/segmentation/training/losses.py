"""Soft Dice + cross-entropy, with deep supervision over the decoder's resolutions."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class DiceCELoss(nn.Module):
    """Cross-entropy plus (1 - mean soft Dice over foreground classes).

    ``batch_dice`` pools the Dice statistics over the whole batch (stabler for small structures in
    2D slices); otherwise Dice is computed per sample and averaged."""

    def __init__(self, batch_dice: bool, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice, self.smooth = batch_dice, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, K, *S); target: (B, 1, *S) integer labels. Computed in float32 whatever the
        logits' dtype (a bf16 forward's softmax and sums would lose the small classes)."""
        logits = logits.float()
        labels = target[:, 0].long()
        cross_entropy = F.cross_entropy(logits, labels)
        probabilities = torch.softmax(logits, dim=1)[:, 1:]
        one_hot = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)[:, 1:]
        axes = tuple(range(2, logits.ndim))
        if self.batch_dice:
            axes = (0,) + axes
        intersection = (probabilities * one_hot).sum(axes)
        denominator = probabilities.sum(axes) + one_hot.sum(axes)
        dice = (2 * intersection + self.smooth) / torch.clamp(denominator + self.smooth, min=1e-8)
        return cross_entropy + (1 - dice.mean())


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """1, 1/2, 1/4 ... with the lowest resolution ignored, normalised to sum 1."""
    weights = [1 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss, self.weights = loss, list(weights)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight:
                total = total + weight * self.loss(output, target)
            else:  # keep unused heads in the graph: DDP expects a gradient for every parameter
                total = total + 0.0 * output.sum()
        return total


def deep_supervision_scales(strides: list[list[int]]) -> list[list[float]]:
    """Resolution of each decoder output relative to the patch, full resolution first."""
    cumulative = np.cumprod(np.array(strides, dtype=float), axis=0)
    return [list(1.0 / row) for row in cumulative[:-1]]
