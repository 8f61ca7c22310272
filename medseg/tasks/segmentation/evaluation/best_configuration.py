"""Choose between the cross-validated configurations of a dataset and their ensembles of two, as
``nnUNetv2_find_best_configuration`` does: every candidate is scored by the foreground mean Dice of
its pooled out-of-fold predictions (before postprocessing); an ensemble's predictions are the mean
of its members' out-of-fold probabilities. The winner's postprocessing is decided on those same
predictions. Writes ``results/DATASET/best_configuration.json`` (scores, choice, how to predict);
an ensemble is a folder ``results/DATASET/ensembles/ensemble__A__B/`` that `medseg predict -m` runs."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.evaluation.report import evaluate_folder, write_report
from medseg.inference.probabilities import PROBABILITIES_SUFFIX, load_probabilities_npz
from medseg.io import read_image, write_image
from medseg.model_folder import ModelFolder
from medseg.ensemble_folder import ENSEMBLE_FILE, ENSEMBLES_FOLDER, write_ensemble_folder
from medseg.tasks.segmentation.evaluation.ensembles import mean_probabilities
from medseg.tasks.segmentation.inference.label_maps import labels_from_probabilities
from medseg.tasks.segmentation.evaluation.postprocessing import apply_postprocessing, decide_postprocessing

BEST_FILE = "best_configuration.json"


@dataclass
class Candidate:
    name: str
    members: list[ModelFolder]
    dice: float | None = None  # pooled out-of-fold foreground mean Dice, before postprocessing
    folder: Path | None = None  # where its scores live (the model folder, or the ensemble's)
    skipped: str | None = None  # why it could not be scored
    report: dict = field(default_factory=dict)


def _fold_cases(folder: ModelFolder) -> dict[str, str]:
    """case id -> the fold whose validation predicted it (from crossval_summary.json's folds)."""
    import json

    summary = json.loads(folder.crossval_summary_path().read_text())
    ending, cases = folder.info.file_ending, {}
    for fold in summary.get("folds", []):
        for path in (folder.fold_folder(fold) / "validation").glob(f"*{ending}"):
            cases[path.name[: -len(ending)]] = fold
    return cases


def _score_single(folder: ModelFolder) -> Candidate:
    import json

    report = json.loads(folder.crossval_summary_path().read_text())
    dice = (report.get("foreground_mean") or {}).get("dice")
    return Candidate(folder.path.name, [folder], dice, folder.path, None if dice is not None else "no foreground Dice in its summary", report)


def _why_not_ensemble(first: ModelFolder, second: ModelFolder, cases: tuple[dict, dict]) -> str | None:
    if first.info.labels != second.info.labels or first.scoring() != second.scoring():
        return f"labels, regions or ignore label differ ({first.info.labels} vs {second.info.labels})"
    if first.info.file_ending != second.info.file_ending or first.reference_labels != second.reference_labels:
        return "trained on different datasets"
    if set(cases[0]) != set(cases[1]):
        return "their cross-validations predicted different cases"
    for folder, folds in zip((first, second), cases):
        missing = [c for c, fold in folds.items() if not (folder.fold_folder(fold) / "validation" / f"{c}{PROBABILITIES_SUFFIX}").is_file()]
        if missing:
            return (
                f"{folder.path.name} kept no out-of-fold probabilities ({missing[0]}{PROBABILITIES_SUFFIX}); train with "
                "`plan-and-train` on several configurations, or `train --save-probabilities`"
            )
    return None


def _score_ensemble(first: ModelFolder, second: ModelFolder, results: Path, log: Callable[[str], None]) -> Candidate:
    name = f"ensemble__{first.path.name}__{second.path.name}"
    cases = (_fold_cases(first), _fold_cases(second))
    why = _why_not_ensemble(first, second, cases)
    if why:
        return Candidate(name, [first, second], skipped=why)
    folder = results / ENSEMBLES_FOLDER / name
    pooled = folder / "crossval_predictions"
    if pooled.exists():
        shutil.rmtree(pooled)
    pooled.mkdir(parents=True)
    ending = first.info.file_ending
    for case_id in sorted(cases[0]):
        members = [
            load_probabilities_npz(member.fold_folder(folds[case_id]) / "validation" / f"{case_id}{PROBABILITIES_SUFFIX}")
            for member, folds in zip((first, second), cases)
        ]
        geometry = read_image(first.fold_folder(cases[0][case_id]) / "validation" / f"{case_id}{ending}")
        write_image(geometry.with_array(labels_from_probabilities(mean_probabilities(members), first.plans)[None]), pooled / f"{case_id}{ending}")
    report = evaluate_folder(pooled, first.reference_labels, first.info.labels, ending, case_ids=sorted(cases[0]), **first.scoring())
    dice = (report.get("foreground_mean") or {}).get("dice")
    log(f"{name}: cross-validation foreground Dice {dice:.4f}" if dice is not None else f"{name}: no foreground Dice")
    return Candidate(name, [first, second], dice, folder, report=report)


def _postprocessing_of(candidate: Candidate) -> dict:
    """The single model's decision (made by its cross-validation), or one made on the ensemble's."""
    if len(candidate.members) == 1:
        return candidate.members[0].postprocessing()
    member = candidate.members[0]
    pooled, ending = candidate.folder / "crossval_predictions", member.info.file_ending
    case_ids = [p.name[: -len(ending)] for p in sorted(pooled.glob(f"*{ending}"))]
    predictions = {c: read_image(pooled / f"{c}{ending}").array[0] for c in case_ids}
    references = {c: read_image(member.reference_labels / f"{c}{ending}").array[0] for c in case_ids}
    decision = decide_postprocessing(member, predictions, references)
    if decision["largest_component_classes"]:
        processed = {c: apply_postprocessing(p, decision["largest_component_classes"]) for c, p in predictions.items()}
        target = candidate.folder / "crossval_predictions_postprocessed"
        target.mkdir(exist_ok=True)
        for case_id, labels in processed.items():
            write_image(read_image(pooled / f"{case_id}{ending}").with_array(labels[None]), target / f"{case_id}{ending}")
        after = evaluate_folder(target, member.reference_labels, member.info.labels, ending, case_ids=case_ids, **member.scoring())
        candidate.report["postprocessed"] = {"mean": after["mean"], "foreground_mean": after["foreground_mean"]}
    return decision


def find_best_configuration(results: Path, folders: list[ModelFolder], log: Callable[[str], None] = print) -> dict:
    """Score every folder and every pair of them; write and return ``best_configuration.json``."""
    if not folders:
        raise MedsegError(f"{results}: no cross-validated model folder to choose from (train with `medseg plan-and-train` first)")
    candidates = [_score_single(folder) for folder in folders]
    candidates += [_score_ensemble(a, b, results, log) for a, b in itertools.combinations(folders, 2)]
    scored = [c for c in candidates if c.dice is not None]
    if not scored:
        raise MedsegError(f"{results}: no candidate could be scored: " + "; ".join(f"{c.name}: {c.skipped}" for c in candidates))
    best = max(scored, key=lambda c: c.dice)
    postprocessing = _postprocessing_of(best)
    if len(best.members) > 1:
        write_report(best.folder / "crossval_summary.json", best.report)
        write_ensemble_folder(best.folder, best.members, postprocessing)
    for candidate in scored:  # ensembles that lost keep their scores, not a folder that looks predictable
        if candidate is not best and len(candidate.members) > 1 and (candidate.folder / ENSEMBLE_FILE).is_file():
            (candidate.folder / ENSEMBLE_FILE).unlink()
    choice = {
        "best": {
            "name": best.name, "members": [m.path.name for m in best.members], "foreground_dice": best.dice,
            "foreground_dice_postprocessed": (best.report.get("postprocessed") or {}).get("foreground_mean", {}).get("dice"),
            "postprocessing": postprocessing.get("largest_component_classes", []),
            "model_folder": str(best.folder),
        },
        "candidates": [
            {"name": c.name, "members": [m.path.name for m in c.members], "foreground_dice": c.dice, **({"skipped": c.skipped} if c.skipped else {})}
            for c in candidates
        ],
        "predict": f"medseg predict -m {best.folder} -i INPUT -o OUTPUT",
    }
    write_json_atomic(results / BEST_FILE, choice)
    return choice
