"""Classification results: predictions.csv written and read, evaluation against a labels table,
pooled cross-validation with per-class thresholds (Youden's J) and a ROC plot, the report table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.tasks.classification.predictions_csv import PREDICTIONS_CSV, TTA_PREDICTIONS_CSV, _text, predicted_classes, read_predictions_csv
from medseg.tasks.classification.patients import patient_rows
from medseg.tasks.classification.run import TASK, classes_of, groups_from_table


def evaluate_predictions(predictions_csv: Path, labels_csv: Path, dataset_json: Path, output: Path | None = None) -> dict:
    """Score a predictions file against a labels table (e.g. labelsTs.csv): AUC from the
    probabilities, the thresholded metrics from the decisions the model made (its thresholds).
    Every labelled case must have a prediction: a mean over the cases that happened to work is refused."""
    from medseg.data.classification import read_labels_csv
    from medseg.data.layout import load_dataset_description
    from medseg.evaluation.classification import classification_report
    from medseg.tasks.classification.patients import patient_level

    description = load_dataset_description(dataset_json.parent) if dataset_json.name == "dataset.json" else None
    if description is None or description.task_type != TASK:
        raise MedsegError(f"{dataset_json}: not the dataset.json of a classification dataset")
    table, problems = read_labels_csv(labels_csv, description)
    if table is None or problems:
        raise MedsegError("; ".join(problems[:5]) or f"{labels_csv}: unusable labels table")
    classes, model_classes = description.classes, predicted_classes(predictions_csv)
    transfer = shared_classes(classes, model_classes, predictions_csv, dataset_json) if not set(classes) <= set(model_classes) else None
    cases, probabilities, _, decisions = read_predictions_csv(predictions_csv, model_classes if transfer else classes)
    position = {case: index for index, case in enumerate(cases)}
    missing = sorted(set(table.targets) - set(position))
    if missing:
        raise MedsegError(f"{predictions_csv}: no prediction for {len(missing)} labelled case(s): {', '.join(missing[:5])}")
    chosen = [position[case] for case in table.targets]
    targets = np.array(list(table.targets.values()))
    if transfer:
        return _transfer_report(transfer, probabilities[chosen], decisions[chosen], targets, description, predictions_csv, labels_csv, output)
    report = classification_report(probabilities[chosen], targets, classes, description.multi_label, decisions=decisions[chosen])
    labelled = list(table.targets)
    onehot = targets.astype(bool) if description.multi_label else np.eye(len(classes), dtype=bool)[targets.astype(int)]
    patients = patient_level(labelled, probabilities[chosen], onehot, groups_from_table(table, labelled), classes, description.multi_label)
    if patients is not None:
        report["patients"] = patients
    report["unlabelled_predictions"] = len(set(position) - set(table.targets))
    report["predictions"], report["references"] = str(predictions_csv), str(labels_csv)
    write_json_atomic(output or predictions_csv.with_name("summary.json"), report)
    return report


def shared_classes(classes: list[str], model_classes: list[str], predictions_csv: Path, dataset_json: Path) -> list[tuple[int, int, str]]:
    """A model from another dataset: (dataset class index, model class index, name) of the classes
    both name (case and spaces ignored); none shared is an error naming both lists."""
    def key(name: str) -> str:
        return "".join(name.lower().split()).replace("_", "")

    theirs = {key(name): index for index, name in enumerate(model_classes)}
    shared = [(index, theirs[key(name)], name) for index, name in enumerate(classes) if key(name) in theirs]
    if not shared:
        raise MedsegError(
            f"{predictions_csv}: its classes ({', '.join(model_classes)}) share no name with those of {dataset_json} ({', '.join(classes)})"
        )
    return shared


def _transfer_report(shared, probabilities, decisions, targets, description, predictions_csv, labels_csv, output) -> dict:
    """Another dataset's model, scored on the classes both name: each shared class one-vs-rest (its
    probability column against the dataset's label), AUC and the model's own decisions."""
    from medseg.evaluation.classification import classification_report

    onehot = targets.astype(bool) if description.multi_label else np.eye(len(description.classes), dtype=bool)[targets.astype(int)]
    ours, theirs, names = [s[0] for s in shared], [s[1] for s in shared], [s[2] for s in shared]
    report = classification_report(probabilities[:, theirs], onehot[:, ours].astype(int), names, True, decisions=decisions[:, theirs])
    report["transfer"] = {
        "shared_classes": names, "dataset_classes": description.classes, "model_classes_ignored": int(probabilities.shape[1] - len(theirs)),
        "note": "a model trained on another dataset, scored on the classes both name only (one-vs-rest per class)",
    }
    report["predictions"], report["references"] = str(predictions_csv), str(labels_csv)
    write_json_atomic(output or predictions_csv.with_name("summary.json"), report)
    return report


def _multi_label(folder) -> bool:
    return bool(folder.configuration.training.get("multi_label", True))


def _fold_predictions(folder, folds, name: str, classes: list[str]) -> list[tuple[list[str], np.ndarray, np.ndarray]] | None:
    """Each fold's validation (case ids, (N, K) probabilities, (N, K) 0/1 targets) from its NAME file;
    None when a fold lacks the file (test-time views: folds validated before medseg wrote them)."""
    found, seen = [], set()
    for fold in folds:
        path = folder.fold_folder(fold) / "validation" / name
        if not path.is_file():
            if name == PREDICTIONS_CSV:
                raise MedsegError(f"{path}: fold {fold} has no finished validation")
            return None
        cases, probabilities, targets, _ = read_predictions_csv(path, classes)
        if targets is None:
            raise MedsegError(f"{path}: holds no target columns")
        overlap = set(cases) & seen
        if overlap:
            raise MedsegError(f"{path}: case(s) {', '.join(sorted(overlap)[:5])} are validated in two folds")
        seen |= set(cases)
        found.append((cases, probabilities, targets))
    return found


def _patient_groups(folder, case_ids: list[str]) -> dict[str, str]:
    """Each case's patient from the training labels table's group column ({} when the raw dataset is gone)."""
    from medseg.data.layout import load_dataset_description
    from medseg.tasks.classification.run import split_keys

    if not (folder.raw_folder / "dataset.json").is_file():
        return {}
    return split_keys(load_dataset_description(folder.raw_folder), case_ids)[0]


def crossval(folder, folds) -> dict:
    """Pool the folds' out-of-fold predictions; choose test-time views if they raise the AUC; fit the
    temperature; then thresholds (multi-label), metrics, patient-level results and the ROC plot, all
    on the calibrated probabilities that predict will give."""
    from medseg.evaluation.classification import classification_report, pick_thresholds, roc_plot
    from medseg.audit.probability_calibration import calibrated, fit_temperature, held_out_quality, write_probability_calibration
    from medseg.tasks.classification.patients import patient_level

    classes, multi_label = classes_of(folder.plans), _multi_label(folder)
    plain = _fold_predictions(folder, folds, PREDICTIONS_CSV, classes)
    viewed = _fold_predictions(folder, folds, TTA_PREDICTIONS_CSV, classes)
    per_fold = {}
    for fold in folds:
        summary = folder.fold_folder(fold) / "validation" / "summary.json"
        if summary.is_file():
            per_fold[fold] = json.loads(summary.read_text())["mean"]["auc"]
    cases = [case for fold_cases, _, _ in plain for case in fold_cases]
    onehot = np.concatenate([t for _, _, t in plain])
    labels = onehot if multi_label else onehot.argmax(1)

    def pooled_auc(predictions) -> float | None:
        return classification_report(np.concatenate([p for _, p, _ in predictions]), labels, classes, multi_label)["mean"]["auc"]

    auc_plain = pooled_auc(plain)
    tta = None
    if viewed is not None:
        if [c for fold_cases, _, _ in viewed for c in fold_cases] != cases:
            raise MedsegError(f"{folder.path}: the folds' {TTA_PREDICTIONS_CSV} and {PREDICTIONS_CSV} list different cases")
        auc_tta = pooled_auc(viewed)
        used = auc_tta is not None and auc_plain is not None and auc_tta > auc_plain
        tta = {"used": used, "auc_plain": auc_plain, "auc_tta": auc_tta, "views": _views(folder)}
    chosen = viewed if tta and tta["used"] else plain
    temperature = {key: fit_temperature(np.concatenate([p for _, p, _ in found]), onehot, multi_label) for key, found in (("plain", plain), ("tta", viewed)) if found}
    quality = held_out_quality([(p, t) for _, p, t in chosen], multi_label)
    probabilities = calibrated(np.concatenate([p for _, p, _ in chosen]), temperature["tta" if chosen is viewed else "plain"], multi_label)
    calibration = {"kind": "temperature", "multi_label": multi_label, "temperature": temperature, "tta": tta or {"used": False, "why": "the folds were validated without test-time views"}, "quality": quality, "folds": list(folds)}
    write_probability_calibration(folder.path, calibration)
    thresholds = pick_thresholds(probabilities, onehot, classes) if multi_label else None
    report = classification_report(probabilities, labels, classes, multi_label, thresholds)
    report.update(folds=list(folds), fold_mean_auc=per_fold, thresholds_picked_on="the pooled out-of-fold predictions (thresholded metrics are optimistic; AUC is not)")
    report["calibration"] = calibration
    patients = patient_level(cases, probabilities, onehot, _patient_groups(folder, cases), classes, multi_label)
    if patients is not None:
        report["patients"] = patients
    if multi_label:
        write_json_atomic(folder.path / "thresholds.json", {"thresholds": thresholds, "picked_on": "pooled out-of-fold validation predictions, calibrated", "folds": list(folds)})
    write_json_atomic(folder.crossval_summary_path(), report)
    roc_plot(folder.path / "roc.png", probabilities, onehot.astype(bool), classes, f"{folder.info.dataset_name} {folder.info.model}: cross-validation ROC")
    return report


def _views(folder) -> int:
    from medseg.tasks.classification.test_time import view_transforms

    return len(view_transforms(folder.configuration.augmentation))


def calibrate(folder, log) -> dict | None:
    """`medseg calibrate`: the cross-validation pooled again from the folds' validation files, which
    refits the temperature and the test-time choice (None: the folder was not cross-validated)."""
    from medseg.audit.probability_calibration import CALIBRATION_NAME

    summary = folder.crossval_summary_path()
    if not summary.is_file():
        log(f"no calibration: {folder.path} was not cross-validated (plan-and-train writes crossval_summary.json)")
        return None
    folds = json.loads(summary.read_text()).get("folds") or folder.folds()
    log(f"pooling the out-of-fold predictions of folds {', '.join(map(str, folds))}")
    report = crossval(folder, folds)
    return {**report["calibration"], "path": str(folder.path / CALIBRATION_NAME)}


def report_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metrics = ("auc", "f1", "balanced_accuracy", "sensitivity", "specificity")
    rows = [[name, *(_text(entry[m]) for m in metrics), str(entry["positives"])] for name, entry in report["per_class"].items()]
    rows.append(["[bold]mean[/bold]", *(_text(report["mean"][m]) for m in metrics), ""])
    if report.get("accuracy") is not None:
        rows.append(["accuracy", _text(report["accuracy"]), "", "", "", "", ""])
    rows += patient_rows(report.get("patients"))
    return ["class", "AUC", "F1", "balanced acc.", "sensitivity", "specificity", "positives"], rows


def report_score(report: dict) -> float:
    return report["mean"]["auc"] or 0.0


def model_info(configuration) -> dict:
    return {"extra": {"multi_label": bool(configuration.training.get("multi_label", True))}}
