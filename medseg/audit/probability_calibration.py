"""A classifier's probabilities, calibrated: temperature scaling fitted on the cross-validation's
out-of-fold predictions, and the choice of test-time augmentation made on them too.

A network trained with cross-entropy is over-confident; dividing its logits by one temperature
(one per class for multi-label sigmoids) fitted to minimise the negative log-likelihood of the
out-of-fold predictions fixes most of that without moving any class's ranking (AUC). The logits
are recovered from the stored probabilities (log p for softmax, log p/(1-p) for sigmoid): softmax
is shift-invariant, so nothing is lost but the clipping of probabilities at 1e-7.

``probability_calibration.json`` in the model folder: {"version", "kind": "temperature",
"multi_label", "tta": {"used", "auc_plain", "auc_tta", "views"}, "temperature": {"plain": T,
"tta": T} (T: a number, or one per class), "quality": {"nll_before", "nll_after", "ece_before",
"ece_after", "estimated": how}}. predict divides each fold's logits by the temperature of the
predictions it makes (with or without test-time views) before the folds are averaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

CALIBRATION_NAME = "probability_calibration.json"
CALIBRATION_VERSION = 1
CLIP = 1e-7
ECE_BINS = 15
LOG_TEMPERATURES = np.linspace(np.log(0.05), np.log(20.0), 241)  # the search grid, refined around its best point


def logits_of(probabilities: np.ndarray, multi_label: bool) -> np.ndarray:
    """(N, K) probabilities -> (N, K) logits that give them back (softmax: up to a shift per row)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(p / (1 - p)) if multi_label else np.log(p)


def from_logits(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1 / (1 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def calibrated(probabilities: np.ndarray, temperature, multi_label: bool) -> np.ndarray:
    """(N, K) probabilities -> (N, K) with the logits divided by the temperature (a number, or (K,))."""
    return from_logits(logits_of(probabilities, multi_label) / np.asarray(temperature, dtype=np.float64), multi_label)


def negative_log_likelihood(probabilities: np.ndarray, onehot: np.ndarray, multi_label: bool) -> float:
    """Mean NLL per image (multi-label: summed over the classes' Bernoulli terms)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CLIP, 1 - CLIP)
    if multi_label:
        return float(-(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)).sum(axis=1).mean())
    return float(-np.log(p[onehot.astype(bool)]).mean())


def expected_calibration_error(probabilities: np.ndarray, onehot: np.ndarray, multi_label: bool, bins: int = ECE_BINS) -> float:
    """Multi-class: of the top class's probability against its accuracy; multi-label: of every
    class's probability against its frequency, pooled. Equal-width bins, weighted by their size."""
    if multi_label:
        confidence, correct = np.asarray(probabilities, float).ravel(), np.asarray(onehot, float).ravel()
    else:
        confidence = np.asarray(probabilities, float).max(axis=1)
        correct = (np.asarray(probabilities).argmax(axis=1) == np.asarray(onehot).argmax(axis=1)).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def fit_temperature(probabilities: np.ndarray, onehot: np.ndarray, multi_label: bool):
    """The temperature (multi-class: one number; multi-label: a list, one per class) minimising the NLL."""
    if multi_label:
        return [_best_temperature(probabilities[:, [k]], onehot[:, [k]], True) for k in range(probabilities.shape[1])]
    return _best_temperature(probabilities, onehot, False)


def _best_temperature(probabilities: np.ndarray, onehot: np.ndarray, multi_label: bool) -> float:
    logits = logits_of(probabilities, multi_label)

    def nll(log_temperature: float) -> float:
        return negative_log_likelihood(from_logits(logits / np.exp(log_temperature), multi_label), onehot, multi_label)

    grid = LOG_TEMPERATURES
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    step = grid[1] - grid[0]
    fine = np.linspace(best - step, best + step, 41)
    return round(float(np.exp(fine[int(np.argmin([nll(t) for t in fine]))])), 4)


def held_out_quality(fold_predictions: list[tuple[np.ndarray, np.ndarray]], multi_label: bool) -> dict:
    """NLL and ECE before and after, each fold calibrated by a temperature fitted on the other folds
    (one fold: fitted and scored on itself, said so)."""
    probabilities = np.concatenate([p for p, _ in fold_predictions])
    onehot = np.concatenate([t for _, t in fold_predictions])
    if len(fold_predictions) > 1:
        scaled = []
        for index, (p, _) in enumerate(fold_predictions):
            others = [fold_predictions[j] for j in range(len(fold_predictions)) if j != index]
            temperature = fit_temperature(np.concatenate([o[0] for o in others]), np.concatenate([o[1] for o in others]), multi_label)
            scaled.append(calibrated(p, temperature, multi_label))
        after, how = np.concatenate(scaled), "each fold calibrated by a temperature fitted on the other folds"
    else:
        after = calibrated(probabilities, fit_temperature(probabilities, onehot, multi_label), multi_label)
        how = "one fold: fitted and scored on the same predictions (optimistic)"
    return {
        "nll_before": round(negative_log_likelihood(probabilities, onehot, multi_label), 4),
        "nll_after": round(negative_log_likelihood(after, onehot, multi_label), 4),
        "ece_before": round(expected_calibration_error(probabilities, onehot, multi_label), 4),
        "ece_after": round(expected_calibration_error(after, onehot, multi_label), 4),
        "estimated": how,
    }


def write_probability_calibration(folder: Path, calibration: dict) -> Path:
    path = Path(folder) / CALIBRATION_NAME
    write_json_atomic(path, {"version": CALIBRATION_VERSION, "kind": "temperature", **calibration})
    return path


def read_probability_calibration(folder: Path) -> dict | None:
    """The folder's calibration, None when it has none (trained before medseg fitted one)."""
    path = Path(folder) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        calibration = json.loads(path.read_text())
        temperatures = calibration["temperature"]
        for value in temperatures.values():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
                raise ValueError("a temperature must be a positive number")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MedsegError(f"{path}: not a probability calibration ({error}); `medseg calibrate {Path(folder)}` writes it again") from None
    if calibration.get("version") != CALIBRATION_VERSION:
        raise MedsegError(f"{path}: version {calibration.get('version')} (this medseg reads {CALIBRATION_VERSION})")
    return calibration


def calibration_lines(calibration: dict) -> list[str]:
    """The calibration as a person reads it."""
    quality, tta = calibration.get("quality", {}), calibration.get("tta", {})
    used = "tta" if tta.get("used") else "plain"
    temperature = calibration["temperature"][used]
    shown = ", ".join(f"{t:g}" for t in temperature) if isinstance(temperature, list) else f"{temperature:g}"
    lines = [
        f"calibration: temperature {shown} on the out-of-fold probabilities; NLL {quality.get('nll_before')} -> {quality.get('nll_after')}, "
        f"ECE {quality.get('ece_before')} -> {quality.get('ece_after')} ({quality.get('estimated', '')})"
    ]
    if tta:
        verdict = "used by predict" if tta.get("used") else "not used: it did not raise the out-of-fold AUC"
        auc_tta = "n/a" if tta.get("auc_tta") is None else f"{tta['auc_tta']:.4f}"
        lines.append(f"test-time augmentation ({tta.get('views')} views): mean AUC {auc_tta} vs {tta.get('auc_plain', 0):.4f} without, {verdict}")
    return lines
