"""Resampling of images (cubic), label maps (linear per label) and probabilities (linear).

Strongly anisotropic data (spacing ratio above the plan's threshold) is resampled in-plane with
the chosen order and along the coarse axis with ``out_of_plane_order`` (nearest by default), so
thick slices are never smeared into each other."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """At least one voxel per axis: two 1 mm slices at a 5 mm target are one slice, not none."""
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target_spacing))


def coarse_axis(spacing: Sequence[float], target_spacing: Sequence[float], threshold: float) -> int | None:
    """The axis to resample separately, or None when the data are not strongly anisotropic."""
    for candidate in (spacing, target_spacing):
        candidate = np.asarray(candidate, dtype=float)
        if len(candidate) == 3 and candidate.max() / candidate.min() > threshold:
            axes = np.flatnonzero(candidate == candidate.max())
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _zoom(array: np.ndarray, shape: Sequence[int], order: int, axis: int | None, out_of_plane_order: int) -> np.ndarray:
    """array: (*spatial) -> (*shape)."""
    if tuple(array.shape) == tuple(shape):
        return array
    factors = [n / o for n, o in zip(shape, array.shape)]
    if axis is None:
        return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    in_plane = [1.0 if a == axis else f for a, f in enumerate(factors)]
    result = ndimage.zoom(array, in_plane, order=order, mode="nearest", grid_mode=True) if any(f != 1 for f in in_plane) else array
    if shape[axis] != array.shape[axis]:
        along = [factors[axis] if a == axis else 1.0 for a in range(array.ndim)]
        result = ndimage.zoom(result, along, order=out_of_plane_order, mode="nearest", grid_mode=True)
    return result


def resample_image(data: np.ndarray, shape: Sequence[int], axis: int | None, order: int = 3, out_of_plane_order: int = 0) -> np.ndarray:
    """data: (C, *spatial) float -> (C, *shape) float32."""
    return np.stack([_zoom(channel.astype(np.float32, copy=False), shape, order, axis, out_of_plane_order) for channel in data])


def resample_labels(label: np.ndarray, shape: Sequence[int], axis: int | None, order: int = 1, out_of_plane_order: int = 0) -> np.ndarray:
    """label: (*spatial) int -> (*shape) int: each label's mask resampled and thresholded at 0.5."""
    if tuple(label.shape) == tuple(shape):
        return label
    result = np.zeros(shape, dtype=label.dtype)
    for value in np.unique(label):
        if value == 0:
            continue
        mask = _zoom((label == value).astype(np.float32), shape, order, axis, out_of_plane_order)
        result[mask >= 0.5] = value
    return result


def resample_probabilities(probabilities: np.ndarray, shape: Sequence[int], axis: int | None, out_of_plane_order: int = 0) -> np.ndarray:
    """probabilities: (K, *spatial) -> (K, *shape), linear in-plane."""
    return resample_image(probabilities, shape, axis, order=1, out_of_plane_order=out_of_plane_order)
