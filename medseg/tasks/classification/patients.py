"""Patient-level results next to per-image ones: where the labels table has a group (patient)
column, each patient's images are combined (the mean, or the maximum, of their probabilities) and
scored against the patient's label: multi-label, a class is present when any image has it;
multi-class, the images must agree (else the patient-level report says why it is missing)."""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("mean", "max")


def patient_level(case_ids: list[str], probabilities: np.ndarray, onehot: np.ndarray, groups: dict[str, str], classes: list[str], multi_label: bool) -> dict | None:
    """probabilities, onehot: (N, K) per image -> {"patients", "images", "mean": report, "max": report},
    {"skipped": why}, or None when no image has a group (no patient column)."""
    from medseg.evaluation.classification import classification_report

    if not any(groups.get(case) for case in case_ids):
        return None
    ungrouped = [case for case in case_ids if not groups.get(case)]
    if ungrouped:
        return {"skipped": f"{len(ungrouped)} image(s) without a patient, e.g. {ungrouped[0]}"}
    rows: dict[str, list[int]] = {}
    for index, case in enumerate(case_ids):
        rows.setdefault(groups[case], []).append(index)
    if len(rows) == len(case_ids):
        return {"skipped": "every patient has one image: the patient level equals the image level"}
    onehot = np.asarray(onehot, dtype=bool)
    targets = []
    for patient, members in rows.items():
        if multi_label:
            targets.append(onehot[members].any(axis=0))
            continue
        labels = {int(k) for k in onehot[members].argmax(axis=1)}
        if len(labels) > 1:
            return {"skipped": f"patient {patient}'s images have different classes ({', '.join(classes[k] for k in sorted(labels))})"}
        targets.append(labels.pop())
    targets = np.array(targets)
    result = {"patients": len(rows), "images": len(case_ids)}
    for how in AGGREGATIONS:
        combine = np.mean if how == "mean" else np.max
        combined = np.stack([combine(probabilities[members], axis=0) for members in rows.values()])
        if not multi_label:
            combined = combined / combined.sum(axis=1, keepdims=True)  # the max of each class: back to a distribution
        result[how] = classification_report(combined, targets.astype(int), classes, multi_label)
    return result


def patient_rows(patients: dict | None) -> list[list[str]]:
    """Rows for the report table: the mean AUC, F1, balanced accuracy, sensitivity and specificity per aggregation."""
    from medseg.tasks.classification.predictions_csv import _text

    if not patients or "skipped" in patients:
        return []
    metrics = ("auc", "f1", "balanced_accuracy", "sensitivity", "specificity")
    return [
        [f"{patients['patients']} patients ({how} of their images)", *(_text(patients[how]["mean"][m]) for m in metrics), ""]
        for how in AGGREGATIONS
    ]
