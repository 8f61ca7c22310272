"""Test-time augmentation for classifiers: a fixed set of views drawn from what training augmented
with (the plan's mirror axes, zoomed crops inside its crop-scale range), each predicted and the
probabilities averaged. Radiographs get no flips (anatomy has a side), as in training.

Views: the image itself; a flip per mirror axis and both together; a crop of the plan's mean crop
area at the centre and at the four edges (shifted as far as the crop allows)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def view_transforms(augmentation: dict) -> list[tuple[str, torch.Tensor]]:
    """-> (name, (2, 3) affine theta: output (x, y) in [-1, 1] -> input position), identity first."""
    views = [("identity", (1.0, 1.0, 1.0, 1.0, 0.0, 0.0))]
    axes = [axis for axis in augmentation.get("mirror_axes", []) if axis in (0, 1)]
    for axis in axes:  # axis 0: rows (a vertical flip), 1: columns (a horizontal flip), as in training
        views.append((f"flip{axis}", (1.0, 1.0, -1.0 if axis == 1 else 1.0, -1.0 if axis == 0 else 1.0, 0.0, 0.0)))
    if len(axes) == 2:
        views.append(("flip01", (1.0, 1.0, -1.0, -1.0, 0.0, 0.0)))
    low, high = augmentation.get("crop_scale", [1.0, 1.0])
    side = math.sqrt((low + high) / 2)
    if side < 0.999:
        room = 1 - side
        for name, (dx, dy) in {"centre": (0, 0), "left": (-room, 0), "right": (room, 0), "top": (0, -room), "bottom": (0, room)}.items():
            views.append((f"crop-{name}", (side, side, 1.0, 1.0, dx, dy)))
    transforms = []
    for name, (scale_x, scale_y, flip_x, flip_y, shift_x, shift_y) in views:
        theta = torch.tensor([[scale_x * flip_x, 0.0, shift_x], [0.0, scale_y * flip_y, shift_y]])
        transforms.append((name, theta))
    return transforms


def apply_view(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, C, H, W) resampled through theta (2, 3), as training's augmentation samples."""
    batch = theta.to(images.dtype)[None].expand(images.shape[0], 2, 3)
    grid = F.affine_grid(batch, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid.to(images.device), mode="bilinear", padding_mode="reflection", align_corners=False)


def predict_views(network: torch.nn.Module, images: torch.Tensor, transforms, to_probabilities) -> torch.Tensor:
    """images: (B, C, H, W) -> (B, K) probabilities averaged over the views (identity alone: no resampling)."""
    total = None
    for name, theta in transforms:
        view = images if name == "identity" else apply_view(images, theta)
        probabilities = to_probabilities(network(view)).float()
        total = probabilities if total is None else total + probabilities
    return total / len(transforms)
