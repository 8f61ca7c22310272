"""Classification metrics: ROC AUC, sensitivity/specificity/F1/balanced accuracy at a threshold,
thresholds picked on validation predictions only, and a ROC plot.

Multi-label: every class is its own binary problem with its own threshold (Youden's J on the
validation predictions). Multi-class: the decision is the most probable class; per-class numbers
are one-vs-rest and balanced accuracy is the mean recall. A class without both positive and
negative cases has no AUC (None, left out of the mean and counted in ``classes_without_auc``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from medseg.atomic import atomic_path


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None without both classes."""
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds): predicting positive when score >= threshold."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_pos = scores[order], positives[order]
    last_of_each = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]  # ties move together
    tp = np.cumsum(sorted_pos)[last_of_each]
    fp = np.cumsum(~sorted_pos)[last_of_each]
    n_pos, n_neg = max(int(positives.sum()), 1), max(int((~positives).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, sorted_scores[last_of_each]]


def youden_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (0.5 when a class lacks positives or negatives)."""
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return 0.5
    fpr, tpr, thresholds = roc_curve(scores, positives)
    youden = tpr[1:] - fpr[1:]
    best = int(np.flatnonzero(youden >= youden.max() - 1e-9)[0]) + 1  # ties: the highest threshold (fewest positive calls)
    return float(thresholds[best])


def binary_metrics(predicted: np.ndarray, positives: np.ndarray) -> dict:
    predicted, positives = np.asarray(predicted, dtype=bool), np.asarray(positives, dtype=bool)
    tp, fp = int((predicted & positives).sum()), int((predicted & ~positives).sum())
    fn, tn = int((~predicted & positives).sum()), int((~predicted & ~positives).sum())
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    known = [v for v in (sensitivity, specificity) if v is not None]
    return {
        "sensitivity": sensitivity, "specificity": specificity, "f1": f1,
        "balanced_accuracy": float(np.mean(known)) if known else None, "positives": tp + fn, "negatives": tn + fp,
    }


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def pick_thresholds(probabilities: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, float]:
    """probabilities, targets: (N, K) multi-label -> a threshold per class from these (validation) predictions."""
    return {name: youden_threshold(probabilities[:, k], targets[:, k]) for k, name in enumerate(classes)}


def classification_report(
    probabilities: np.ndarray, targets: np.ndarray, classes: list[str], multi_label: bool, thresholds: dict[str, float] | None = None,
    decisions: np.ndarray | None = None,
) -> dict:
    """probabilities: (N, K); targets: (N, K) 0/1 (multi-label) or (N,) class indices (multi-class).
    ``decisions``: (N, K) 0/1 predicted classes as already made (a predictions file); otherwise
    ``thresholds`` per class (multi-label; None picks them on these predictions: say so when reporting)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    onehot = targets.astype(bool) if multi_label else np.eye(len(classes), dtype=bool)[targets.astype(int)]
    if decisions is not None:
        decisions = np.asarray(decisions, dtype=bool)
    elif multi_label:
        thresholds = thresholds or pick_thresholds(probabilities, onehot, classes)
        decisions = np.stack([probabilities[:, k] >= thresholds[name] for k, name in enumerate(classes)], axis=1)
    else:
        decisions = np.eye(len(classes), dtype=bool)[probabilities.argmax(1)]
    per_class = {}
    for k, name in enumerate(classes):
        entry = {"auc": roc_auc(probabilities[:, k], onehot[:, k]), **binary_metrics(decisions[:, k], onehot[:, k])}
        if multi_label and thresholds:
            entry["threshold"] = thresholds[name]
        per_class[name] = entry
    mean = {metric: _mean(entry[metric] for entry in per_class.values()) for metric in ("auc", "f1", "balanced_accuracy", "sensitivity", "specificity")}
    report = {
        "num_cases": int(len(probabilities)), "multi_label": multi_label, "per_class": per_class, "mean": mean,
        "classes_without_auc": [name for name, entry in per_class.items() if entry["auc"] is None],
    }
    if not multi_label:
        report["accuracy"] = float((probabilities.argmax(1) == targets.astype(int)).mean()) if len(targets) else None
        report["mean"]["balanced_accuracy"] = _mean(entry["sensitivity"] for entry in per_class.values())
    return report


PLOT_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
                (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def roc_plot(path: Path, probabilities: np.ndarray, onehot: np.ndarray, classes: list[str], title: str) -> None:
    """One ROC curve per class (with its AUC in the legend) on a 640 x 480 PNG."""
    from PIL import Image, ImageDraw

    width, height, left, top, size = 760, 500, 50, 40, 420
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    draw.rectangle([left, top, left + size, top + size], outline="black")
    draw.line([left, top + size, left + size, top], fill=(200, 200, 200))
    for tick in (0.0, 0.5, 1.0):
        draw.text((left + tick * size - 6, top + size + 4), f"{tick:.1f}", fill="black")
        draw.text((left - 28, top + size - tick * size - 6), f"{tick:.1f}", fill="black")
    draw.text((left + size // 2 - 60, top + size + 20), "1 - specificity", fill="black")
    for k, name in enumerate(classes):
        colour = PLOT_COLOURS[k % len(PLOT_COLOURS)]
        auc = roc_auc(probabilities[:, k], onehot[:, k])
        if auc is not None:
            fpr, tpr, _ = roc_curve(probabilities[:, k], onehot[:, k])
            draw.line([(left + f * size, top + size - t * size) for f, t in zip(fpr, tpr)], fill=colour, width=2)
        draw.text((left + size + 16, top + 14 * k), f"{name}: AUC {'-' if auc is None else f'{auc:.3f}'}", fill=colour)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
