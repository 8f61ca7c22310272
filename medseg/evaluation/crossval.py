"""Cross-validation report of a model folder: pool the folds' held-out predictions, score them,
decide postprocessing, and pick the best configuration among several."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.evaluation.postprocessing import apply_postprocessing, choose_postprocessing
from medseg.evaluation.report import evaluate_folder, write_report
from medseg.io import read_image, write_image


def collect_crossval(model_folder: Path, folds: list[str]) -> dict:
    info = json.loads((model_folder / "model.json").read_text())
    ending, labels = info["file_ending"], {k: int(v) for k, v in info["labels"].items()}
    pooled = model_folder / "crossval_predictions"
    if pooled.exists():
        shutil.rmtree(pooled)
    pooled.mkdir()
    for fold in folds:
        source = model_folder / f"fold_{fold}" / "validation"
        if not (source / "summary.json").is_file():
            raise MedsegError(f"{source}: fold {fold} has no finished validation")
        for path in source.glob(f"*{ending}"):
            shutil.copyfile(path, pooled / path.name)
    case_ids = [p.name[: -len(ending)] for p in sorted(pooled.glob(f"*{ending}"))]
    references_folder = Path(info["raw_folder"]) / "labelsTr"
    report = evaluate_folder(pooled, references_folder, labels, ending, case_ids=case_ids)
    # largest-component postprocessing, kept where it helps
    predictions = {c: read_image(pooled / f"{c}{ending}").array[0] for c in case_ids}
    references = {c: read_image(references_folder / f"{c}{ending}").array[0] for c in case_ids}
    decision = choose_postprocessing(predictions, references, [v for v in labels.values() if v != 0])
    write_json_atomic(model_folder / "postprocessing.json", decision)
    if decision["largest_component_classes"]:
        processed = model_folder / "crossval_predictions_postprocessed"
        processed.mkdir(exist_ok=True)
        for case_id in case_ids:
            image = read_image(pooled / f"{case_id}{ending}")
            write_image(image.with_array(apply_postprocessing(image.array[0], decision["largest_component_classes"])[None]), processed / f"{case_id}{ending}")
        report_post = evaluate_folder(processed, references_folder, labels, ending, case_ids=case_ids)
        report["postprocessed"] = {"mean": report_post["mean"], "foreground_mean": report_post["foreground_mean"]}
    report["folds"] = folds
    write_report(model_folder / "crossval_summary.json", report)
    return report


def best_configuration(dataset_results: Path, reports: dict[str, dict]) -> str:
    """The configuration with the highest cross-validation foreground Dice (after postprocessing)."""
    def score(report: dict) -> float:
        chosen = report.get("postprocessed", report)
        return chosen["foreground_mean"]["dice"] or 0.0

    best = max(reports, key=lambda name: score(reports[name]))
    content = {"best": best, "scores": {name: score(r) for name, r in reports.items()}}
    write_json_atomic(dataset_results / "best_configuration.json", content)
    return best
