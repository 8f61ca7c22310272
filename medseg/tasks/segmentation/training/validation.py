"""Final validation of a fold: predict the held-out cases in their original geometry and score
them against the raw labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from medseg.atomic import write_json_atomic
from medseg.audit.confidence import CONFIDENCE_FILE
from medseg.evaluation.report import evaluate_folder, write_report
from medseg.tasks.segmentation.inference.predictor import Predictor
from medseg.io import write_image
from medseg.inference.probabilities import PROBABILITIES_SUFFIX, save_probabilities_npz
from medseg.model_folder import ModelFolder
from medseg.tasks.segmentation.cascade import with_previous_stage
from medseg.tasks.segmentation.inference.label_maps import prediction_confidence
from medseg.tasks.segmentation.preprocessing.dataset import load_preprocessed_case


def validate_fold(
    model_folder: ModelFolder, fold_folder: Path, networks: list, device: torch.device, val_cases: list[str], mirror: bool,
    log: Callable[[str], None], save_probabilities: bool = False,
) -> dict:
    """``save_probabilities``: also ``validation/CASE.probabilities.npz`` (float16 (K, *original
    spatial), as `medseg predict --save-probabilities` writes), what ensembles are scored on.
    ``validation/confidence.json``: each case's structure confidence (medseg.audit.confidence)."""
    predictor = Predictor(model_folder, networks, device, mirror=mirror)  # the raw prediction is scored: no postprocessing
    output = fold_folder / "validation"
    output.mkdir(exist_ok=True)
    data_folder = model_folder.preprocessed_folder
    ending = model_folder.info.file_ending
    started = time.perf_counter()
    cascade = model_folder.configuration.previous_stage is not None
    confidence = {}
    for case_id in val_cases:
        data, seg, properties = load_preprocessed_case(data_folder, case_id, mmap=False)
        if cascade:  # the previous stage's out-of-fold segmentation, as in training
            data = with_previous_stage(data, seg[1], model_folder.plans.label_map_size)
        prediction = predictor.predict_preprocessed(data, properties, probabilities=True)
        write_image(prediction.segmentation, output / f"{case_id}{ending}")
        # what the probabilities said of each structure, which cross-validation calibrates against the true Dice
        confidence[case_id] = prediction_confidence(prediction.probabilities, prediction.segmentation.array[0], model_folder.plans)
        if save_probabilities:
            save_probabilities_npz(prediction.probabilities, output / f"{case_id}{PROBABILITIES_SUFFIX}")
    write_json_atomic(output / CONFIDENCE_FILE, confidence)
    seconds = time.perf_counter() - started
    log(f"validation: predicted {len(val_cases)} held-out cases in {seconds:.1f} s")
    report = evaluate_folder(output, model_folder.reference_labels, model_folder.info.labels, ending, case_ids=val_cases, **model_folder.scoring())
    report["prediction_seconds_per_case"] = round(seconds / max(len(val_cases), 1), 3)
    write_report(output / "summary.json", report)
    return report
