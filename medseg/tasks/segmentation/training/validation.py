"""Final validation of a fold: predict the held-out cases in their original geometry and score
them against the raw labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from medseg.evaluation.report import evaluate_folder, write_report
from medseg.tasks.segmentation.inference.predictor import Predictor
from medseg.io import write_image
from medseg.model_folder import ModelFolder
from medseg.tasks.segmentation.preprocessing.dataset import load_preprocessed_case


def validate_fold(
    model_folder: ModelFolder, fold_folder: Path, networks: list, device: torch.device, val_cases: list[str], mirror: bool,
    log: Callable[[str], None],
) -> dict:
    predictor = Predictor(model_folder, networks, device, mirror=mirror)  # the raw prediction is scored: no postprocessing
    output = fold_folder / "validation"
    output.mkdir(exist_ok=True)
    data_folder = model_folder.preprocessed_folder
    ending = model_folder.info.file_ending
    started = time.perf_counter()
    for case_id in val_cases:
        data, _, properties = load_preprocessed_case(data_folder, case_id, mmap=False)
        prediction = predictor.predict_preprocessed(data, properties)
        write_image(prediction.segmentation, output / f"{case_id}{ending}")
    seconds = time.perf_counter() - started
    log(f"validation: predicted {len(val_cases)} held-out cases in {seconds:.1f} s")
    report = evaluate_folder(output, model_folder.reference_labels, model_folder.info.labels, ending, case_ids=val_cases)
    report["prediction_seconds_per_case"] = round(seconds / max(len(val_cases), 1), 3)
    write_report(output / "summary.json", report)
    return report
