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
    return report
