"""2D/3D training augmentation on torch tensors, per sample: rotation and scaling (one resampling
pass), mirroring, and intensity changes (noise, blur, brightness, contrast, low resolution, gamma).
Probabilities follow nnU-Net's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError


@dataclass(frozen=True)
class AugmentationSettings:
    rotation_degrees: float = 30.0
    in_plane_only: bool = False  # anisotropic 3D patches rotate about the first (coarse) axis only
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_rotation: float = 0.2
    p_scale: float = 0.2
    mirror_axes: tuple[int, ...] = ()
    p_noise: float = 0.1
    p_blur: float = 0.2
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    p_low_resolution: float = 0.25
    p_gamma: float = 0.3


def augmentation_for(configuration) -> AugmentationSettings:
    """A configuration's planned spatial augmentation (see medseg.tasks.segmentation.planning.planner.augmentation_plan)."""
    plan = configuration.augmentation
    if not plan:
        raise MedsegError(f"configuration {configuration.name} has no augmentation plan; re-plan with `medseg plan`")
    return AugmentationSettings(
        rotation_degrees=float(plan["rotation_degrees"]), in_plane_only=bool(plan["in_plane_only"]), mirror_axes=tuple(plan["mirror_axes"])
    )


def _rotation_matrix(angles: Sequence[float], ndim: int) -> np.ndarray:
    if ndim == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rotation = np.eye(3)
        rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
        matrix = rotation @ matrix
    return matrix


def spatial_transform(
    data: torch.Tensor, seg: torch.Tensor, patch_size: Sequence[int], settings: AugmentationSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """data: (C, *R), seg: (1, *R) with R >= patch -> the centre patch, rotated/scaled: (C, *P), (1, *P)."""
    ndim = len(patch_size)
    matrix = np.eye(ndim)
    if rng.random() < settings.p_rotation:
        limit = math.radians(settings.rotation_degrees)
        if ndim == 2:
            angles = [rng.uniform(-limit, limit)]
        elif settings.in_plane_only:
            angles = [rng.uniform(-limit, limit), 0.0, 0.0]
        else:
            angles = list(rng.uniform(-limit, limit, 3))
        matrix = _rotation_matrix(angles, ndim) @ matrix
    if rng.random() < settings.p_scale:
        matrix = matrix * rng.uniform(*settings.scale_range)
    region = data.shape[1:]
    if np.allclose(matrix, np.eye(ndim)):
        start = [(r - p) // 2 for r, p in zip(region, patch_size)]
        window = tuple(slice(s, s + p) for s, p in zip(start, patch_size))
        return data[(slice(None),) + window], seg[(slice(None),) + window]
    # affine_grid works in (x, y[, z]) = reversed array-axis order, normalised to [-1, 1] of the region
    # region position (voxels from the centre) = matrix @ patch position; normalise both sides
    theta_axes = matrix * np.array(patch_size, dtype=float)[None, :] / np.array(region, dtype=float)[:, None]
    theta = np.zeros((ndim, ndim + 1))
    theta[:, :ndim] = theta_axes[::-1, ::-1]
    theta_t = torch.as_tensor(theta, dtype=torch.float32)[None]
    grid = F.affine_grid(theta_t, [1, 1, *patch_size], align_corners=False)
    image = F.grid_sample(data[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    labels = F.grid_sample(seg[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return image, labels.round().to(seg.dtype)


def intensity_transform(data: torch.Tensor, settings: AugmentationSettings, rng: np.random.Generator) -> torch.Tensor:
    """data: (C, *P) float -> same shape, intensity-augmented."""
    ndim = data.ndim - 1
    if rng.random() < settings.p_noise:
        data = data + torch.randn_like(data) * float(rng.uniform(0, 0.1))
    if rng.random() < settings.p_blur:
        data = _gaussian_blur(data, float(rng.uniform(0.5, 1.0)))
    if rng.random() < settings.p_brightness:
        data = data * float(rng.uniform(0.75, 1.25))
    if rng.random() < settings.p_contrast:
        factor = float(rng.uniform(0.75, 1.25))
        mean = data.mean(dim=tuple(range(1, data.ndim)), keepdim=True)
        low, high = data.amin(dim=tuple(range(1, data.ndim)), keepdim=True), data.amax(dim=tuple(range(1, data.ndim)), keepdim=True)
        data = torch.maximum(torch.minimum((data - mean) * factor + mean, high), low)
    if rng.random() < settings.p_low_resolution:
        zoom = float(rng.uniform(0.5, 1.0))
        size = [max(1, round(n * zoom)) for n in data.shape[1:]]
        mode = "bilinear" if ndim == 2 else "trilinear"
        small = F.interpolate(data[None], size=size, mode="nearest")
        data = F.interpolate(small, size=list(data.shape[1:]), mode=mode, align_corners=False)[0]
    if rng.random() < settings.p_gamma:
        data = _gamma(data, float(rng.uniform(0.7, 1.5)), invert=rng.random() < 0.1)
    return data


def _gaussian_blur(data: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=data.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    ndim = data.ndim - 1
    out = data[:, None]  # (C, 1, *P): channels as batch
    conv = F.conv2d if ndim == 2 else F.conv3d
    for axis in range(ndim):
        shape = [1, 1] + [1] * ndim
        shape[2 + axis] = len(x)
        padding = [0] * ndim
        padding[axis] = radius
        out = conv(out, kernel.view(shape), padding=tuple(padding))
    return out[:, 0]


def _gamma(data: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma on each channel rescaled to [0, 1], then restored to the channel's mean and std."""
    if invert:
        data = -data
    axes = tuple(range(1, data.ndim))
    mean, std = data.mean(dim=axes, keepdim=True), data.std(dim=axes, keepdim=True)
    low, high = data.amin(dim=axes, keepdim=True), data.amax(dim=axes, keepdim=True)
    span = torch.clamp(high - low, min=1e-7)
    data = ((data - low) / span) ** gamma * span + low
    new_mean, new_std = data.mean(dim=axes, keepdim=True), data.std(dim=axes, keepdim=True)
    data = (data - new_mean) / torch.clamp(new_std, min=1e-7) * std + mean
    return -data if invert else data


def mirror(data: torch.Tensor, seg: torch.Tensor, axes: Sequence[int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each spatial axis in ``axes`` with probability 0.5 (axes count spatial dims from 0)."""
    flips = [axis + 1 for axis in axes if rng.random() < 0.5]
    if flips:
        data, seg = torch.flip(data, flips), torch.flip(seg, flips)
    return data, seg
