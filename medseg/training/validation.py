"""Final validation of a fold: predict the held-out cases in their original geometry and score
them against the raw labels."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from medseg.evaluation.report import evaluate_folder
from medseg.inference.predictor import Predictor
from medseg.io import write_image
from medseg.preprocessing.dataset import load_preprocessed_case


def validate_fold(
    fold_folder: Path, networks: list, device: torch.device, val_cases: list[str], mirror: bool, log: Callable[[str], None]
) -> dict:
    model_folder = fold_folder.parent
    info = json.loads((model_folder / "model.json").read_text())
    predictor = Predictor.from_networks(model_folder, networks, device, mirror=mirror)
    output = fold_folder / "validation"
    output.mkdir(exist_ok=True)
    data_folder = Path(info["preprocessed_folder"])
    ending = info["file_ending"]
    started = time.perf_counter()
    for case_id in val_cases:
        data, _, properties = load_preprocessed_case(data_folder, case_id, mmap=False)
        prediction = predictor.predict_preprocessed(data, properties)
        write_image(prediction.segmentation, output / f"{case_id}{ending}")
    log(f"validation: predicted {len(val_cases)} held-out cases in {time.perf_counter() - started:.1f} s")
    labels = {name: int(value) for name, value in info["labels"].items()}
    return evaluate_folder(
        output, Path(info["raw_folder"]) / "labelsTr", labels, ending, output=output / "summary.json", case_ids=val_cases
    )
