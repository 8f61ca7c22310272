"""Dice, normalised surface Dice (NSD) and the 95th-percentile Hausdorff distance, per class,
with distances in millimetres (the voxel spacing is honoured). Tested equal to MONAI's
compute_dice, compute_surface_dice and compute_hausdorff_distance(percentile=95).

Empty masks: both empty gives NaN for every metric (nothing to find, nothing found: left out of
the means); an empty reference with a non-empty prediction, or the reverse, gives Dice 0, NSD 0
and HD95 = the image diagonal in mm (MONAI gives NaN or infinity there, which a mean cannot hold)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Boolean masks -> Dice; NaN when both are empty (nothing to find, nothing found)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face-neighbour outside it (or on the image border): the edge that
    MONAI's surface metrics use, so NSD and HD95 equal theirs."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _distances_to(surface_from: np.ndarray, surface_to: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``surface_from`` to the nearest voxel of ``surface_to``."""
    field = ndimage.distance_transform_edt(~surface_to, sampling=spacing)
    return field[surface_from]


def surface_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> tuple[float, float]:
    """(NSD at the tolerance, HD95 in mm). Both empty: (NaN, NaN); one empty: (0, image diagonal)."""
    if not prediction.any() and not reference.any():
        return float("nan"), float("nan")
    if not prediction.any() or not reference.any():
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(reference.shape, spacing))))
        return 0.0, diagonal
    surface_p, surface_r = surface(prediction), surface(reference)
    p_to_r = _distances_to(surface_p, surface_r, spacing)
    r_to_p = _distances_to(surface_r, surface_p, spacing)
    nsd = (np.count_nonzero(p_to_r <= tolerance_mm) + np.count_nonzero(r_to_p <= tolerance_mm)) / (len(p_to_r) + len(r_to_p))
    hd95 = max(np.percentile(p_to_r, 95), np.percentile(r_to_p, 95))
    return float(nsd), float(hd95)


def scored_classes(labels: dict[str, int], regions: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """What is scored: each foreground label (its value), or each region (the values it covers,
    found in the reference and in the region model's label map alike)."""
    if regions:
        return {name: list(values) for name, values in regions.items()}
    return {name: [value] for name, value in labels.items() if value != 0}


def case_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], labels: dict[str, int], tolerances_mm: dict[str, float],
    regions: dict[str, list[int]] | None = None, ignore_label: int | None = None,
) -> dict[str, dict[str, float]]:
    """Label maps (*spatial) -> {class name: {"dice", "nsd", "hd95", "voxels_reference", "voxels_prediction"}}.
    ``regions``: score regions (nnU-Net's region-based datasets) instead of labels; ``ignore_label``:
    reference voxels of that value are left out (prediction and reference both count as background there)."""
    if ignore_label is not None:
        annotated = reference != ignore_label
        prediction, reference = np.where(annotated, prediction, 0), np.where(annotated, reference, 0)
    result = {}
    for name, values in scored_classes(labels, regions).items():
        p, r = np.isin(prediction, values), np.isin(reference, values)
        nsd, hd95 = surface_metrics(p, r, spacing, tolerances_mm.get(name, tolerances_mm.get("default", 2.0)))
        result[name] = {"dice": dice(p, r), "nsd": nsd, "hd95": hd95, "voxels_reference": int(r.sum()), "voxels_prediction": int(p.sum())}
    return result
