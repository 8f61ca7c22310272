"""Evaluate a folder of predictions against references: per case and class, plus means."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.evaluation.metrics import case_metrics, scored_classes
from medseg.parallel import map_parallel

METRICS = ("dice", "nsd", "hd95")


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def summarize(per_case: dict[str, dict[str, dict[str, float]]], labels: dict[str, int], regions: dict[str, list[int]] | None = None) -> dict:
    """Mean of each metric per class (NaN cases skipped) and the foreground mean over classes."""
    classes = list(scored_classes(labels, regions))
    mean = {name: {m: _nanmean([per_case[c][name][m] for c in per_case if name in per_case[c]]) for m in METRICS} for name in classes}
    foreground = {m: _nanmean([mean[name][m] for name in classes if mean[name][m] is not None]) for m in METRICS}
    return {"mean": mean, "foreground_mean": foreground, "num_cases": len(per_case)}


def _evaluate_job(job) -> tuple[str, dict | None, str | None]:
    """-> (case id, metrics, problem). An unusable prediction is an error, or with ``allow_missing``
    it is scored as an empty prediction and its problem kept beside the metrics."""
    from medseg.io import read_image

    case_id, prediction_path, reference_path, labels, tolerances, allow_missing, regions, ignore_label = job
    try:
        reference = read_image(reference_path)
    except MedsegError as error:
        return case_id, None, str(error)
    try:
        prediction = read_prediction(prediction_path, reference, reference_path, labels)
    except MedsegError as error:
        if not allow_missing:
            return case_id, None, str(error)
        empty = np.zeros(reference.spatial_shape, dtype=np.uint8)
        return case_id, case_metrics(empty, reference.array[0], reference.spacing, labels, tolerances, regions, ignore_label), str(error)
    return case_id, case_metrics(prediction, reference.array[0], reference.spacing, labels, tolerances, regions, ignore_label), None


def read_prediction(path: Path, reference, reference_path: Path, labels: dict[str, int]) -> np.ndarray:
    """The predicted label map (*spatial), checked against its reference and the declared labels."""
    from medseg.io import read_image

    if not path.is_file():
        raise MedsegError(f"{path}: missing prediction")
    prediction = read_image(path)
    if prediction.num_channels != 1:
        raise MedsegError(f"{path}: has {prediction.num_channels} channels; a prediction is one label map (scoring channel 0 alone would hide the rest)")
    if reference.num_channels != 1:
        raise MedsegError(f"{reference_path}: has {reference.num_channels} channels; a reference is one label map")
    differences = reference.geometry_differences(prediction, names=("reference", "prediction"))
    if differences:
        raise MedsegError(f"{path}: geometry differs from {reference_path}: {'; '.join(differences)}")
    values = prediction.array[0]
    undeclared = sorted(set(np.unique(values).tolist()) - set(labels.values()))
    if undeclared:
        raise MedsegError(f"{path}: label value(s) {', '.join(map(str, undeclared[:5]))} are not declared in dataset.json ({labels})")
    return values


def evaluate_folder(
    prediction_folder: Path,
    reference_folder: Path,
    labels: dict[str, int],
    file_ending: str,
    tolerances_mm: dict[str, float] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    output: Path | None = None,
    case_ids: list[str] | None = None,
    allow_missing: bool = False,
    regions: dict[str, list[int]] | None = None,
    ignore_label: int | None = None,
) -> dict:
    """Every reference (of ``case_ids``) is scored against the prediction of the same name. A
    missing or unusable prediction fails the evaluation, naming the cases: a mean over only the
    cases that worked would look better than the truth. ``allow_missing`` scores them as empty
    predictions (Dice 0 wherever the reference has the class) and lists them in the report.
    ``regions`` / ``ignore_label``: as medseg.evaluation.metrics.case_metrics."""
    references = sorted(reference_folder.glob(f"*{file_ending}"))
    if case_ids is not None:
        wanted = set(case_ids)
        references = [r for r in references if r.name[: -len(file_ending)] in wanted]
    if not references:
        raise MedsegError(f"{reference_folder}: no reference files ending in {file_ending}")
    missing = [r.name[: -len(file_ending)] for r in references if not (prediction_folder / r.name).is_file()]
    if len(missing) == len(references):
        raise MedsegError(f"{prediction_folder}: holds none of the {len(references)} cases of {reference_folder}")
    jobs = [
        (r.name[: -len(file_ending)], prediction_folder / r.name, r, labels, tolerances_mm or {}, allow_missing, regions, ignore_label)
        for r in references
    ]
    results = map_parallel(_evaluate_job, jobs, workers, progress)
    problems = {case_id: problem for case_id, _, problem in results if problem}
    unscored = {case_id: problems[case_id] for case_id, metrics, _ in results if metrics is None}
    if unscored:
        listing = "; ".join(list(unscored.values())[:5])
        hint = "" if allow_missing else " (--allow-missing scores missing or unusable predictions as empty)"
        raise MedsegError(f"{len(unscored)} of {len(references)} case(s) cannot be scored, so no mean is reported{hint}: {listing}")
    per_case = {case_id: metrics for case_id, metrics, _ in results}
    report = {**summarize(per_case, labels, regions), "per_case": per_case, "scored_as_empty": problems, "missing_predictions": missing}
    if case_ids is None:  # predictions nobody scored: listed, so a mislabelled file is not silently left out
        scored = {r.name for r in references}
        report["unreferenced_predictions"] = sorted(p.name for p in prediction_folder.glob(f"*{file_ending}") if p.name not in scored)
    if output is not None:
        write_report(output, report)
    return report


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, _finite(report))


def _finite(value):
    """NaN/inf become null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
