"""predictions.csv, the classification task's output: one row per image with a probability per
class (and, multi-label, the classes over their thresholds), written atomically and read back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import MedsegError


PREDICTIONS_CSV = "predictions.csv"
REVIEW_COLUMN = "review"  # predict's input-check findings: a reason to look at the case, empty when none
TTA_PREDICTIONS_CSV = "predictions_tta.csv"  # validation only: the same images through the test-time views


def _text(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_predictions_csv(
    path: Path, case_ids: list[str], probabilities: np.ndarray, classes: list[str], targets: np.ndarray | None = None,
    multi_label: bool = True, thresholds: dict[str, float] | None = None, reviews: list[str] | None = None,
) -> None:
    """case, one probability column per class, then the predicted classes (and the targets, for
    validation; and ``review``, the input checks' findings per case, empty when none fired)."""
    header = ["case", *classes, "predicted"] + ([f"target:{name}" for name in classes] if targets is not None else [])
    header += [REVIEW_COLUMN] if reviews is not None else []
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for index, case_id in enumerate(case_ids):
                row = probabilities[index]
                if multi_label:
                    limits = thresholds or {name: 0.5 for name in classes}
                    predicted = "|".join(name for k, name in enumerate(classes) if row[k] >= limits[name])
                else:
                    predicted = classes[int(np.argmax(row))]
                line = [case_id, *(f"{value:.6f}" for value in row), predicted]
                if targets is not None:
                    target = targets[index] if multi_label else np.eye(len(classes), dtype=int)[int(targets[index])]
                    line += [str(int(v)) for v in target]
                if reviews is not None:
                    line.append(reviews[index])
                writer.writerow(line)


def read_predictions_csv(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    """(case ids, (N, K) probabilities, (N, K) 0/1 targets when the file holds them, (N, K) predicted classes)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedsegError(f"{path}: cannot read ({error})") from None
    if not rows or any(name not in rows[0] for name in ["case", *classes, "predicted"]):
        raise MedsegError(f"{path}: expected columns case,{','.join(classes)},predicted")
    try:
        probabilities = np.array([[float(row[name]) for name in classes] for row in rows])
    except (TypeError, ValueError) as error:
        raise MedsegError(f"{path}: a probability is not a number ({error})") from None
    if not np.isfinite(probabilities).all():
        raise MedsegError(f"{path}: holds NaN or infinite probabilities")
    decisions = np.zeros(probabilities.shape, dtype=bool)
    for index, row in enumerate(rows):
        for name in filter(None, (row["predicted"] or "").split("|")):
            if name not in classes:
                raise MedsegError(f"{path}:{index + 2}: predicted class {name!r} is not one of {classes}")
            decisions[index, classes.index(name)] = True
    with_targets = all(f"target:{name}" in rows[0] for name in classes)
    targets = np.array([[int(row[f"target:{name}"]) for name in classes] for row in rows]) if with_targets else None
    return [row["case"] for row in rows], probabilities, targets, decisions


def predicted_classes(path: Path) -> list[str]:
    """The class columns of a predictions file, in order (its header less case, predicted, target:*)."""
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedsegError(f"{path}: cannot read ({error})") from None
    if "case" not in header or "predicted" not in header:
        raise MedsegError(f"{path}: not a predictions file (expected columns case, one per class, predicted)")
    return [name for name in header if name not in ("case", "predicted", REVIEW_COLUMN) and not name.startswith("target:")]
