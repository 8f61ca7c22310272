"""Largest-connected-component postprocessing, kept per class only where it raises the
cross-validation Dice."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.evaluation.metrics import dice


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """labels: (*spatial) -> copy where only the largest connected region of ``value`` remains."""
    mask = labels == value
    components, count = ndimage.label(mask)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    result = labels.copy()
    result[mask & (components != int(np.argmax(sizes)))] = 0
    return result


def apply_postprocessing(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    for value in classes:
        labels = keep_largest_component(labels, value)
    return labels


def choose_postprocessing(
    predictions: dict[str, np.ndarray], references: dict[str, np.ndarray], label_values: list[int], ignore_label: int | None = None,
) -> dict:
    """Per class: mean Dice with and without largest-component filtering over the CV cases
    (voxels the reference leaves unannotated, ``ignore_label``, count for neither)."""
    if ignore_label is not None:
        predictions = {c: np.where(references[c] == ignore_label, 0, p) for c, p in predictions.items()}
        references = {c: np.where(r == ignore_label, 0, r) for c, r in references.items()}
    decisions = {}
    for value in label_values:
        before, after = [], []
        for case_id, prediction in predictions.items():
            reference = references[case_id] == value
            before.append(dice(prediction == value, reference))
            after.append(dice(keep_largest_component(prediction, value) == value, reference))
        mean_before, mean_after = np.nanmean(before), np.nanmean(after)
        decisions[str(value)] = {"dice_before": float(mean_before), "dice_after": float(mean_after), "apply": bool(mean_after > mean_before + 1e-4)}
    return {"largest_component_classes": [int(v) for v, d in decisions.items() if d["apply"]], "decisions": decisions}


def decide_postprocessing(folder, predictions: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> dict:
    """A model folder's choice on its cross-validation predictions; none for a region-based model
    (its label map's values are nested regions: keeping one value's largest component would cut
    the regions inside it)."""
    if folder.plans.regions:
        return {"largest_component_classes": [], "decisions": {}, "not_decided": "region-based model"}
    values = [v for v in folder.info.labels.values() if v != 0]
    return choose_postprocessing(predictions, references, values, ignore_label=folder.plans.ignore_label)
