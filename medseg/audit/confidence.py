"""What a prediction's own probabilities say about each structure it found: the raw material of the
expected Dice (medseg.audit.calibration).

Per foreground label, with M the voxels predicted as that label and p its probability:
- ``soft_dice``: 2 * sum(p over M) / (sum(p) + |M|), the Dice the label map would have if the
  probabilities were right (a confident structure with a sharp edge scores near 1, a fuzzy or
  fragmentary one lower); a structure neither predicted nor probable anywhere counts as 1;
- ``mean_probability``: the mean of p over M; ``max_softmax``: the mean over M of the largest
  class probability (the plain baseline a flag must beat); ``entropy``: the mean over M of the
  probabilities' entropy, divided by its maximum (0 certain, 1 uniform);
- ``voxels``: |M|, and ``expected_voxels``: sum(p).
A region-based model (one sigmoid per region) gives each region its own probability map, M is
where it passes one half, and its entropy is the binary entropy of that map."""

from __future__ import annotations

import numpy as np

CONFIDENCE_FILE = "confidence.json"  # a fold's validation/: case -> label -> these features
CONFIDENCE_FEATURES = ("soft_dice", "mean_probability", "max_softmax", "entropy")


def _entropy(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return -(probabilities * np.log(clipped)).sum(axis=axis)


def structure_confidence(
    probabilities: np.ndarray, label_map: np.ndarray, channels: dict[str, tuple[int, int]], regions: bool = False, region_threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """probabilities: (K, *spatial) softmax, or one sigmoid per region with ``regions``; label_map:
    (*spatial) the label values written; channels: foreground label name -> (its value in the label
    map, its probability channel), as ``label_channels`` gives them; ``region_threshold``: where a
    region's sigmoid makes it present (the model's own rule)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    normaliser = np.log(2.0) if regions else np.log(max(probabilities.shape[0], 2))
    result = {}
    for name, (value, channel) in channels.items():
        p = probabilities[channel]
        # a region is where its sigmoid passes one half (nested regions overwrite each other's values in the label map)
        mask = p > region_threshold if regions else label_map == value
        voxels, expected = int(mask.sum()), float(p.sum())
        inside = float(p[mask].sum()) if voxels else 0.0
        denominator = expected + voxels
        soft = 1.0 if denominator < 1.0 else 2.0 * inside / denominator
        if voxels:  # per structure, over its voxels only: a model with many classes never holds a second (K, *spatial) array
            within = np.stack([p[mask], 1.0 - p[mask]]) if regions else probabilities[:, mask]
            entropy = float((_entropy(within) / normaliser).mean())
            max_softmax = float(within.max(axis=0).mean())
            mean_probability = inside / voxels
        else:
            entropy, max_softmax, mean_probability = 0.0, 1.0, 1.0
        result[name] = {
            "soft_dice": round(soft, 6), "mean_probability": round(mean_probability, 6), "max_softmax": round(max_softmax, 6),
            "entropy": round(entropy, 6), "voxels": voxels, "expected_voxels": round(expected, 3),
        }
    return result


def label_channels(labels: dict[str, int], regions: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Foreground label name -> (label value, probability channel): a softmax model's channel is
    the label value; a region-based model's is the region's position in its regions list."""
    if regions:
        return {name: (labels[name], index) for index, name in enumerate(regions)}
    return {name: (value, value) for name, value in labels.items() if value > 0}

