"""Evaluate a folder of predictions against references: per case and class, plus means."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.evaluation.metrics import case_metrics
from medseg.parallel import map_parallel

METRICS = ("dice", "nsd", "hd95")


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def summarize(per_case: dict[str, dict[str, dict[str, float]]], labels: dict[str, int]) -> dict:
    """Mean of each metric per class (NaN cases skipped) and the foreground mean over classes."""
    classes = [name for name, value in labels.items() if value != 0]
    mean = {name: {m: _nanmean([per_case[c][name][m] for c in per_case if name in per_case[c]]) for m in METRICS} for name in classes}
    foreground = {m: _nanmean([mean[name][m] for name in classes if mean[name][m] is not None]) for m in METRICS}
    return {"mean": mean, "foreground_mean": foreground, "num_cases": len(per_case)}


def _evaluate_job(job) -> tuple[str, dict | None, str | None]:
    from medseg.io import read_image

    case_id, prediction_path, reference_path, labels, tolerances = job
    try:
        prediction = read_image(prediction_path)
        reference = read_image(reference_path)
        differences = reference.geometry_differences(prediction)
        if differences:
            raise MedsegError(f"{prediction_path}: geometry differs from {reference_path}: {'; '.join(differences)}")
        metrics = case_metrics(prediction.array[0], reference.array[0], reference.spacing, labels, tolerances)
        return case_id, metrics, None
    except MedsegError as error:
        return case_id, None, str(error)


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
) -> dict:
    """Every reference with a prediction of the same name is scored; missing predictions are errors."""
    references = sorted(reference_folder.glob(f"*{file_ending}"))
    if case_ids is not None:
        wanted = set(case_ids)
        references = [r for r in references if r.name[: -len(file_ending)] in wanted]
    if not references:
        raise MedsegError(f"{reference_folder}: no reference files ending in {file_ending}")
    jobs, missing = [], []
    for reference in references:
        case_id = reference.name[: -len(file_ending)]
        prediction = prediction_folder / reference.name
        if prediction.is_file():
            jobs.append((case_id, prediction, reference, labels, tolerances_mm or {}))
        else:
            missing.append(case_id)
    if not jobs:
        raise MedsegError(f"{prediction_folder}: holds none of the {len(references)} cases of {reference_folder}")
    results = map_parallel(_evaluate_job, jobs, workers, progress)
    per_case = {case_id: metrics for case_id, metrics, error in results if metrics is not None}
    errors = {case_id: error for case_id, _, error in results if error}
    report = {**summarize(per_case, labels), "per_case": per_case, "errors": errors, "missing_predictions": missing}
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
