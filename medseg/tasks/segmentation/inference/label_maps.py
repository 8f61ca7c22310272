"""Probabilities -> label map: the most likely class (softmax outputs), or for a region-based model
(one sigmoid per region, nnU-Net's) each region above one half writes its value, in
regions_class_order, so a nested region (tumour core inside the whole tumour) overwrites its parent."""

from __future__ import annotations

import numpy as np

REGION_THRESHOLD = 0.5


def label_dtype(num_values: int):
    return np.uint8 if num_values <= 256 else np.int16


def most_likely_labels(probabilities: np.ndarray) -> np.ndarray:
    """(K, *spatial) class probabilities -> (*spatial) label values."""
    return np.argmax(probabilities, axis=0).astype(label_dtype(probabilities.shape[0]))


def region_labels(probabilities: np.ndarray, class_order: list[int]) -> np.ndarray:
    """(R, *spatial) region probabilities -> (*spatial) label values: region r's value where its
    probability exceeds one half, later regions over earlier ones."""
    labels = np.zeros(probabilities.shape[1:], dtype=label_dtype(max(class_order) + 1))
    for probability, value in zip(probabilities, class_order):
        labels[probability > REGION_THRESHOLD] = value
    return labels


def labels_from_probabilities(probabilities: np.ndarray, plans) -> np.ndarray:
    """The label map of a model's probabilities (``plans``: its medseg.planning.plans.Plans)."""
    if plans.regions:
        return region_labels(probabilities, [plans.labels[name] for name in plans.regions])
    return most_likely_labels(probabilities)


def prediction_confidence(probabilities: np.ndarray, label_map: np.ndarray, plans) -> dict[str, dict[str, float]]:
    """What a model's probabilities (K, *spatial) say of each structure of its label map
    (medseg.audit.confidence), the ignore label left out (it is no class)."""
    from medseg.audit.confidence import label_channels, structure_confidence

    regions = list(plans.regions) if plans.regions else None
    channels = {name: pair for name, pair in label_channels(plans.labels, regions).items() if regions or pair[0] != plans.ignore_label}
    return structure_confidence(probabilities, label_map, channels, regions=bool(regions), region_threshold=REGION_THRESHOLD)
