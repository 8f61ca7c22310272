"""Classification results: predictions.csv written and read, evaluation against a labels table,
pooled cross-validation with per-class thresholds (Youden's J) and a ROC plot, the report table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.tasks.classification.predictions_csv import PREDICTIONS_CSV, _text, read_predictions_csv
from medseg.tasks.classification.run import TASK, classes_of


def evaluate_predictions(predictions_csv: Path, labels_csv: Path, dataset_json: Path, output: Path | None = None) -> dict:
    """Score a predictions file against a labels table (e.g. labelsTs.csv): AUC from the
    probabilities, the thresholded metrics from the decisions the model made (its thresholds).
    Every labelled case must have a prediction: a mean over the cases that happened to work is refused."""
    from medseg.data.classification import read_labels_csv
    from medseg.data.layout import load_dataset_description
    from medseg.evaluation.classification import classification_report

    description = load_dataset_description(dataset_json.parent) if dataset_json.name == "dataset.json" else None
    if description is None or description.task_type != TASK:
        raise MedsegError(f"{dataset_json}: not the dataset.json of a classification dataset")
    table, problems = read_labels_csv(labels_csv, description)
    if table is None or problems:
        raise MedsegError("; ".join(problems[:5]) or f"{labels_csv}: unusable labels table")
    classes = description.classes
    cases, probabilities, _, decisions = read_predictions_csv(predictions_csv, classes)
    position = {case: index for index, case in enumerate(cases)}
    missing = sorted(set(table.targets) - set(position))
    if missing:
        raise MedsegError(f"{predictions_csv}: no prediction for {len(missing)} labelled case(s): {', '.join(missing[:5])}")
    chosen = [position[case] for case in table.targets]
    targets = np.array(list(table.targets.values()))
    report = classification_report(probabilities[chosen], targets, classes, description.multi_label, decisions=decisions[chosen])
    report["unlabelled_predictions"] = len(set(position) - set(table.targets))
    report["predictions"], report["references"] = str(predictions_csv), str(labels_csv)
    write_json_atomic(output or predictions_csv.with_name("summary.json"), report)
    return report


def _multi_label(folder) -> bool:
    return bool(folder.configuration.training.get("multi_label", True))


def crossval(folder, folds) -> dict:
    from medseg.evaluation.classification import classification_report, pick_thresholds, roc_plot

    classes, multi_label = classes_of(folder.plans), _multi_label(folder)
    cases, probabilities, targets, per_fold = [], [], [], {}
    for fold in folds:
        path = folder.fold_folder(fold) / "validation" / PREDICTIONS_CSV
        if not path.is_file():
            raise MedsegError(f"{path}: fold {fold} has no finished validation")
        fold_cases, fold_probabilities, fold_targets, _ = read_predictions_csv(path, classes)
        if fold_targets is None:
            raise MedsegError(f"{path}: holds no target columns")
        overlap = set(fold_cases) & set(cases)
        if overlap:
            raise MedsegError(f"{path}: case(s) {', '.join(sorted(overlap)[:5])} are validated in two folds")
        cases += fold_cases
        probabilities.append(fold_probabilities)
        targets.append(fold_targets)
        summary = folder.fold_folder(fold) / "validation" / "summary.json"
        if summary.is_file():
            per_fold[fold] = json.loads(summary.read_text())["mean"]["auc"]
    probabilities, onehot = np.concatenate(probabilities), np.concatenate(targets)
    thresholds = pick_thresholds(probabilities, onehot, classes) if multi_label else None
    report = classification_report(probabilities, onehot if multi_label else onehot.argmax(1), classes, multi_label, thresholds)
    report.update(folds=list(folds), fold_mean_auc=per_fold, thresholds_picked_on="the pooled out-of-fold predictions (thresholded metrics are optimistic; AUC is not)")
    if multi_label:
        write_json_atomic(folder.path / "thresholds.json", {"thresholds": thresholds, "picked_on": "pooled out-of-fold validation predictions", "folds": list(folds)})
    write_json_atomic(folder.crossval_summary_path(), report)
    roc_plot(folder.path / "roc.png", probabilities, onehot.astype(bool), classes, f"{folder.info.dataset_name} {folder.info.model}: cross-validation ROC")
    return report


def report_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metrics = ("auc", "f1", "balanced_accuracy", "sensitivity", "specificity")
    rows = [[name, *(_text(entry[m]) for m in metrics), str(entry["positives"])] for name, entry in report["per_class"].items()]
    rows.append(["[bold]mean[/bold]", *(_text(report["mean"][m]) for m in metrics), ""])
    if report.get("accuracy") is not None:
        rows.append(["accuracy", _text(report["accuracy"]), "", "", "", "", ""])
    return ["class", "AUC", "F1", "balanced acc.", "sensitivity", "specificity", "positives"], rows


def report_score(report: dict) -> float:
    return report["mean"]["auc"] or 0.0


def model_info(configuration) -> dict:
    return {"extra": {"multi_label": bool(configuration.training.get("multi_label", True))}}
