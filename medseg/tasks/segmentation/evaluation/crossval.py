"""Cross-validation report of a segmentation model folder: pool the folds' held-out predictions,
score them and decide postprocessing."""

from __future__ import annotations

import shutil

from medseg.errors import MedsegError
from medseg.tasks.segmentation.evaluation.postprocessing import apply_postprocessing, decide_postprocessing
from medseg.evaluation.report import evaluate_folder, write_report
from medseg.io import read_image, write_image
from medseg.model_folder import ModelFolder


def collect_crossval(model_folder: ModelFolder, folds: list[str]) -> dict:
    ending, labels = model_folder.info.file_ending, model_folder.info.labels
    pooled = model_folder.path / "crossval_predictions"
    if pooled.exists():
        shutil.rmtree(pooled)
    pooled.mkdir()
    for fold in folds:
        source = model_folder.fold_folder(fold) / "validation"
        if not (source / "summary.json").is_file():
            raise MedsegError(f"{source}: fold {fold} has no finished validation")
        for path in source.glob(f"*{ending}"):
            shutil.copyfile(path, pooled / path.name)
    case_ids = [p.name[: -len(ending)] for p in sorted(pooled.glob(f"*{ending}"))]
    references_folder = model_folder.reference_labels
    report = evaluate_folder(pooled, references_folder, labels, ending, case_ids=case_ids, **model_folder.scoring())
    # largest-component postprocessing, kept where it helps
    predictions = {c: read_image(pooled / f"{c}{ending}").array[0] for c in case_ids}
    references = {c: read_image(references_folder / f"{c}{ending}").array[0] for c in case_ids}
    decision = decide_postprocessing(model_folder, predictions, references)
    model_folder.write_postprocessing(decision)
    if decision["largest_component_classes"]:
        processed = model_folder.path / "crossval_predictions_postprocessed"
        processed.mkdir(exist_ok=True)
        for case_id in case_ids:
            image = read_image(pooled / f"{case_id}{ending}")
            write_image(image.with_array(apply_postprocessing(image.array[0], decision["largest_component_classes"])[None]), processed / f"{case_id}{ending}")
        report_post = evaluate_folder(processed, references_folder, labels, ending, case_ids=case_ids, **model_folder.scoring())
        report["postprocessed"] = {"mean": report_post["mean"], "foreground_mean": report_post["foreground_mean"]}
    report["folds"] = folds
    write_report(model_folder.crossval_summary_path(), report)
    calibrate_from_crossval(model_folder, folds, report)
    return report


def calibrate_from_crossval(model_folder: ModelFolder, folds: list[str], report: dict) -> dict | None:
    """Fit the expected Dice and the review thresholds (medseg.audit.calibration) on the pooled
    out-of-fold predictions; None (nothing written) when a fold's validation kept no confidence."""
    from medseg.audit.calibration import fit_calibration, validation_rows, write_calibration

    rows, missing = validation_rows(model_folder, folds, report["per_case"])
    if missing or not rows:
        return None
    calibration = fit_calibration(rows, model_folder.configuration.ndim)
    write_calibration(model_folder.path, calibration)
    return calibration


def recalibrate(model_folder: ModelFolder, log=print) -> dict | None:
    """``medseg calibrate``: the calibration of a cross-validated folder; a fold whose validation
    predates the confidence features predicts its held-out cases again (with its own network, the
    cases its validation folder holds) to get them. None when the folder was never cross-validated."""
    import json

    from medseg.tasks.prediction import PredictorOptions, open_predictor
    from medseg.audit.confidence import CONFIDENCE_FILE
    from medseg.tasks.segmentation.training.validation import validate_fold

    summary = model_folder.crossval_summary_path()
    if not summary.is_file():
        return None
    try:
        report = json.loads(summary.read_text())
        folds = [str(fold) for fold in report["folds"]]
        report["per_case"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{summary}: unreadable cross-validation report ({error}); rerun plan-and-train") from None
    ending = model_folder.info.file_ending
    for fold in folds:
        validation = model_folder.fold_folder(fold) / "validation"
        if (validation / CONFIDENCE_FILE).is_file():
            continue
        cases = sorted(path.name[: -len(ending)] for path in validation.glob(f"*{ending}"))
        if not cases:
            raise MedsegError(f"{validation}: no held-out predictions to learn the calibration from")
        log(f"fold {fold}: predicting its {len(cases)} held-out cases again for their confidence")
        predictor = open_predictor(model_folder, PredictorOptions(folds=[fold]), surface="medseg calibrate")
        validate_fold(model_folder, model_folder.fold_folder(fold), predictor.networks, predictor.device, cases, True, log)
    return calibrate_from_crossval(model_folder, folds, report)