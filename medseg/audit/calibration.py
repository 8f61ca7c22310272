"""Expected Dice per structure, and when to ask for a review: fitted on the cross-validation's
out-of-fold predictions, where each case's true Dice is known.

For each label, an isotonic (monotone non-decreasing) map from a confidence feature of the
prediction (medseg.audit.confidence; ``FEATURE``, the mean max softmax inside the structure) to the
Dice it turned out to have, fitted by pool-adjacent-violators
and applied by linear interpolation between its steps; a label with too few cases to fit gets
the identity (the feature itself), said in the calibration. The review threshold per label is
the expected Dice below which a case is flagged: the one that best separates (Youden's J) the
out-of-fold cases under the ``poor_dice`` line (0.85 in 3D, 0.8 in 2D) from the rest.

``calibration.json`` in the model folder: {"version", "feature", "poor_dice", "labels": {name:
{"x": [...], "y": [...], "threshold", "cases", "poor_cases", "fitted"}}, "quality": {name:
{"auroc", "baseline_auroc", "mean_absolute_error"}}}."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

CALIBRATION_NAME = "calibration.json"
CALIBRATION_VERSION = 1
# the confidence feature the expected Dice is fitted from: the mean max softmax inside the structure
# found the poor DSB2018 cases better than the soft Dice (AUROC 0.89 vs 0.64, bench/qa/flag_quality.py)
FEATURE = "max_softmax"
MIN_CASES = 8  # fewer out-of-fold cases of a label: no fit (the soft Dice stands for itself)
POOR_DICE = {2: 0.8, 3: 0.85}


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: the non-decreasing step function closest (least squares) to y over
    sorted x; returns the steps as (x, y) points, one per pooled block (its mean x and value)."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    blocks: list[list[float]] = []  # [sum y, count, sum x]
    for xv, yv in zip(xs, ys):
        blocks.append([yv, 1.0, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            y_sum, count, x_sum = blocks.pop()
            blocks[-1][0] += y_sum
            blocks[-1][1] += count
            blocks[-1][2] += x_sum
    return [b[2] / b[1] for b in blocks], [b[0] / b[1] for b in blocks]


def apply_map(points_x: list[float], points_y: list[float], value: float) -> float:
    """The fitted map at ``value``: linear between steps, flat beyond the ends."""
    if not points_x:
        return float(value)
    return float(np.interp(value, points_x, points_y))


def fit_label(features: np.ndarray, dice: np.ndarray, poor_dice: float) -> dict:
    """One label's map and review threshold from its out-of-fold (soft Dice, true Dice) pairs."""
    from medseg.evaluation.classification import youden_threshold

    features, dice = np.asarray(features, float), np.asarray(dice, float)
    fitted = len(features) >= MIN_CASES
    xs, ys = isotonic_fit(features, dice) if fitted else ([], [])
    expected = np.array([apply_map(xs, ys, f) for f in features])
    poor = dice < poor_dice
    # flag when the expected Dice is low: a high score is -expected
    threshold = -youden_threshold(-expected, poor) if poor.any() and (~poor).any() else poor_dice
    return {"x": [round(v, 6) for v in xs], "y": [round(v, 6) for v in ys], "threshold": round(float(threshold), 6),
            "cases": int(len(features)), "poor_cases": int(poor.sum()), "fitted": fitted}


def flag_quality(expected: np.ndarray, baseline: np.ndarray, dice: np.ndarray, poor_dice: float) -> dict:
    """How well the expected Dice finds the poor cases (AUROC, higher is better) against the plain
    baseline (mean maximum softmax probability), and its mean absolute error against the true Dice."""
    from medseg.evaluation.classification import roc_auc

    poor = np.asarray(dice, float) < poor_dice
    auroc = roc_auc(-np.asarray(expected, float), poor)
    baseline_auroc = roc_auc(-np.asarray(baseline, float), poor)
    return {"auroc": None if auroc is None else round(auroc, 4), "baseline_auroc": None if baseline_auroc is None else round(baseline_auroc, 4),
            "mean_absolute_error": round(float(np.mean(np.abs(np.asarray(expected, float) - np.asarray(dice, float)))), 4) if len(dice) else None}


def fit_calibration(rows: list[dict], ndim: int, feature: str = FEATURE) -> dict:
    """rows: one per out-of-fold case and label: {"label", "soft_dice", "max_softmax", "dice"}."""
    poor_dice = POOR_DICE[ndim]
    labels, quality = {}, {}
    for name in sorted({row["label"] for row in rows}):
        mine = [row for row in rows if row["label"] == name]
        features = np.array([row[feature] for row in mine])
        dice = np.array([row["dice"] for row in mine])
        labels[name] = fit_label(features, dice, poor_dice)
        expected = np.array([apply_map(labels[name]["x"], labels[name]["y"], f) for f in features])
        quality[name] = flag_quality(expected, np.array([row["max_softmax"] for row in mine]), dice, poor_dice)
    return {"version": CALIBRATION_VERSION, "feature": feature, "poor_dice": poor_dice, "labels": labels, "quality": quality}


def validation_rows(model_folder, folds: list[str], per_case: dict) -> tuple[list[dict], list[str]]:
    """One row per out-of-fold case and label with its confidence and true Dice (``per_case``: the
    cross-validation report's); and the folds whose validation kept no confidence (trained before)."""
    from medseg.audit.confidence import CONFIDENCE_FILE

    rows, missing = [], []
    for fold in folds:
        path = model_folder.fold_folder(fold) / "validation" / CONFIDENCE_FILE
        if not path.is_file():
            missing.append(fold)
            continue
        try:
            confidence = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MedsegError(f"{path}: unreadable ({error})") from None
        for case_id, structures in confidence.items():
            for name, features in structures.items():
                dice = per_case.get(case_id, {}).get(name, {}).get("dice")
                if dice is None or not np.isfinite(dice):  # absent from both reference and prediction: no Dice to learn from
                    continue
                rows.append({"case": case_id, "label": name, "dice": float(dice), **features})
    return rows, missing


def expected_dice(calibration: dict, confidence: dict[str, dict]) -> dict[str, dict]:
    """Per label: the expected Dice and whether it falls under the label's review threshold."""
    result = {}
    for name, features in confidence.items():
        fitted = calibration["labels"].get(name)
        if fitted is None:
            continue
        value = apply_map(fitted["x"], fitted["y"], features[calibration["feature"]])
        result[name] = {"expected_dice": round(value, 4), "threshold": fitted["threshold"], "review": value <= fitted["threshold"]}
    return result


def write_calibration(folder: Path, calibration: dict) -> Path:
    target = Path(folder) / CALIBRATION_NAME
    write_json_atomic(target, calibration)
    return target


def read_calibration(folder: Path) -> dict | None:
    from medseg.audit import read_audit_file

    return read_audit_file(folder, CALIBRATION_NAME, CALIBRATION_VERSION, "labels", "a calibration")
