"""An nnU-Net v2 model folder's expected-Dice calibration, from nnU-Net's own validation: each
fold's ``validation/summary.json`` holds every held-out case's true Dice per label, and with
``nnUNetv2_train ... --npz`` (or ``--val --npz`` afterwards) ``validation/CASE.npz`` holds its
softmax. The confidence features come from those probabilities and the label map they give (their
argmax, what nnU-Net wrote), so medseg fits the same calibration as for its own folders
(medseg.audit.calibration) and writes ``calibration.json`` into the folder: the one file medseg
adds to an nnU-Net folder. A fold without probabilities leaves the folder with input checks only,
and the reason is said."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError


def _summary_cases(summary: Path, ending: str) -> dict[str, dict[str, float]]:
    """nnU-Net's summary.json -> case -> label value (as a string) -> Dice (NaN kept: absent from both)."""
    try:
        content = json.loads(summary.read_text())
        cases = {}
        for entry in content["metric_per_case"]:
            name = Path(entry["prediction_file"]).name
            case = name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]
            cases[case] = {str(key): float(values["Dice"]) for key, values in entry["metrics"].items()}
        return cases
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{summary}: not nnU-Net's validation summary ({type(error).__name__}: {error})") from None


def _probabilities(path: Path) -> np.ndarray:
    try:
        with np.load(path) as content:
            return np.asarray(content["probabilities"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise MedsegError(f"{path}: not nnU-Net's saved probabilities (an npz with 'probabilities'; {type(error).__name__}: {error})") from None


def nnunet_validation_rows(folder) -> tuple[list[dict], str | None]:
    """One row per held-out case and label ({"case", "label", "dice", features}); and why there are
    none to fit from (None when every fold's validation has what it needs)."""
    from medseg.audit.confidence import label_channels, structure_confidence

    if folder.plans.regions:
        return [], "region-based nnU-Net folders are not calibrated (their validation scores regions, not labels)"
    ending, channels = folder.info.file_ending, label_channels(folder.info.labels)
    rows = []
    for fold in folder.folds():
        validation = folder.fold_folder(fold) / "validation"
        summary = validation / "summary.json"
        if not summary.is_file():
            return [], f"fold {fold} has no validation ({summary} is missing: nnUNetv2_train ... --val --npz writes it)"
        per_case = _summary_cases(summary, ending)
        without = [case for case in per_case if not (validation / f"{case}.npz").is_file()]
        if without:
            return [], (f"fold {fold}'s validation kept no probabilities ({without[0]}.npz and {len(without) - 1} more are missing: "
                        "nnUNetv2_train DATASET CONFIGURATION FOLD --val --npz writes them)")
        for case, dice_per_label in per_case.items():
            probabilities = _probabilities(validation / f"{case}.npz")
            if probabilities.shape[0] != len(folder.info.labels):
                raise MedsegError(f"{validation / (case + '.npz')}: {probabilities.shape[0]} probability channels; the model has {len(folder.info.labels)} labels")
            confidence = structure_confidence(probabilities, probabilities.argmax(axis=0), channels)
            for name, features in confidence.items():
                dice = dice_per_label.get(str(channels[name][0]))
                if dice is None or not np.isfinite(dice):  # absent from both reference and prediction
                    continue
                rows.append({"case": case, "label": name, "dice": dice, **features})
    if not rows:
        return [], "the folds' validation summaries list no case with a Dice"
    return rows, None


def calibrate_nnunet_folder(folder, log) -> dict | None:
    """Fit and write calibration.json; None (and the reason logged) when the folder cannot give it."""
    from medseg.audit.calibration import fit_calibration, write_calibration

    rows, reason = nnunet_validation_rows(folder)
    if reason:
        log(f"no calibration: {reason}; predict runs the input checks only")
        return None
    log(f"fitting on nnU-Net's validation: {len({row['case'] for row in rows})} held-out cases of folds {', '.join(folder.folds())}")
    calibration = fit_calibration(rows, folder.configuration.ndim)
    write_calibration(folder.path, calibration)
    return calibration
