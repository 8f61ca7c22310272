"""Batched 2D augmentation for classifiers, on torch tensors (one affine resampling per batch).

Two presets, picked by the planner from the images: radiographs (grayscale: anatomy has a side and
an up, so no flips and small rotations) and endoscopy/photographs (colour: no canonical
orientation, so flips along both axes and any rotation). Both use a random resized crop (the
``crop_scale`` range of the image area, aspect ratio 3/4 to 4/3) and brightness/contrast jitter on
the z-scored intensities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RADIOGRAPH = {"mirror_axes": [], "rotation_degrees": 10.0, "crop_scale": [0.7, 1.0], "brightness": 0.2, "contrast": 0.2}
PHOTOGRAPH = {"mirror_axes": [0, 1], "rotation_degrees": 180.0, "crop_scale": [0.5, 1.0], "brightness": 0.2, "contrast": 0.2}


def augmentation_preset(num_channels: int) -> dict:
    return dict(PHOTOGRAPH if num_channels == 3 else RADIOGRAPH)


def augment_batch(images: torch.Tensor, settings: dict, generator: torch.Generator) -> torch.Tensor:
    """images: (B, C, H, W) z-scored -> (B, C, H, W) randomly cropped, rotated, mirrored and jittered."""
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    low, high = settings.get("crop_scale", [1.0, 1.0])
    area = uniform(low, high)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
    scale_x, scale_y = (area * log_ratio).sqrt().clamp(max=1.0), (area / log_ratio).sqrt().clamp(max=1.0)
    shift_x, shift_y = (1 - scale_x) * uniform(-1, 1), (1 - scale_y) * uniform(-1, 1)
    angle = uniform(-1, 1) * math.radians(settings.get("rotation_degrees", 0.0))
    flips = torch.ones(b, 2)
    for axis in settings.get("mirror_axes", []):  # axis 0: rows (vertical flip), 1: columns (horizontal)
        flips[:, 1 - axis] = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(b, 2, 3)  # output (x, y) in [-1, 1] -> input sampling position
    theta[:, 0, 0], theta[:, 0, 1] = cos * scale_x * flips[:, 0], -sin * scale_y * flips[:, 1]
    theta[:, 1, 0], theta[:, 1, 1] = sin * scale_x * flips[:, 0], cos * scale_y * flips[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid.to(images.device), mode="bilinear", padding_mode="reflection", align_corners=False)
    contrast = 1 + uniform(-1, 1) * settings.get("contrast", 0.0)
    brightness = uniform(-1, 1) * settings.get("brightness", 0.0)
    return out * contrast.view(b, 1, 1, 1).to(out) + brightness.view(b, 1, 1, 1).to(out)
