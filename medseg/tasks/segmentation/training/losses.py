"""Soft Dice + cross-entropy, with deep supervision over the decoder's resolutions."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _soft_dice(probabilities: torch.Tensor, one_hot: torch.Tensor, batch_dice: bool, smooth: float) -> torch.Tensor:
    """Mean soft Dice over channels; (B, K, *S) each, already masked where the label is ignored."""
    axes = tuple(range(2, probabilities.ndim))
    if batch_dice:
        axes = (0,) + axes
    intersection = (probabilities * one_hot).sum(axes)
    denominator = probabilities.sum(axes) + one_hot.sum(axes)
    return ((2 * intersection + smooth) / torch.clamp(denominator + smooth, min=1e-8)).mean()


class DiceCELoss(nn.Module):
    """Cross-entropy plus (1 - mean soft Dice over foreground classes).

    ``batch_dice`` pools the Dice statistics over the whole batch (stabler for small structures in
    2D slices); otherwise Dice is computed per sample and averaged. ``ignore_label``: voxels of that
    value add nothing to either term (sparse annotations, nnU-Net's ignore label)."""

    def __init__(self, batch_dice: bool, smooth: float = 1e-5, ignore_label: int | None = None):
        super().__init__()
        self.batch_dice, self.smooth, self.ignore_label = batch_dice, smooth, ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, K, *S); target: (B, 1, *S) integer labels. Computed in float32 whatever the
        logits' dtype (a bf16 forward's softmax and sums would lose the small classes)."""
        logits = logits.float()
        labels = target[:, 0].long()
        if self.ignore_label is None:
            cross_entropy = F.cross_entropy(logits, labels)
            mask = None
        else:
            mask = labels != self.ignore_label
            # all voxels ignored: no cross-entropy term (F.cross_entropy would give NaN)
            cross_entropy = F.cross_entropy(logits, labels, ignore_index=self.ignore_label) if mask.any() else logits.sum() * 0.0
            labels = torch.where(mask, labels, torch.zeros_like(labels))
        probabilities = torch.softmax(logits, dim=1)[:, 1:]
        one_hot = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)[:, 1:]
        if mask is not None:
            probabilities, one_hot = probabilities * mask[:, None], one_hot * mask[:, None]
        return cross_entropy + (1 - _soft_dice(probabilities, one_hot, self.batch_dice, self.smooth))


def region_targets(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """labels: (B, *S) reference values -> (B, R, *S) float: 1 where a voxel's value is in region r."""
    return torch.stack([torch.isin(labels, torch.as_tensor(list(values), device=labels.device)) for values in regions], dim=1).float()


class RegionDiceBCELoss(nn.Module):
    """Region-based training (nnU-Net's, e.g. BraTS's nested tumour regions): one sigmoid output per
    region, binary cross-entropy plus (1 - mean soft Dice over the regions); ``ignore_label`` voxels
    add nothing."""

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool, smooth: float = 1e-5, ignore_label: int | None = None):
        super().__init__()
        self.regions, self.batch_dice, self.smooth, self.ignore_label = [list(r) for r in regions], batch_dice, smooth, ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, R, *S); target: (B, 1, *S) reference label values."""
        logits = logits.float()
        labels = target[:, 0].long()
        targets = region_targets(labels, self.regions)
        if self.ignore_label is None:
            bce = F.binary_cross_entropy_with_logits(logits, targets)
            probabilities = torch.sigmoid(logits)
        else:
            mask = (labels != self.ignore_label)[:, None].float()
            per_voxel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * mask
            bce = per_voxel.sum() / torch.clamp(mask.sum() * logits.shape[1], min=1.0)
            probabilities, targets = torch.sigmoid(logits) * mask, targets * mask
        return bce + (1 - _soft_dice(probabilities, targets, self.batch_dice, self.smooth))


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
