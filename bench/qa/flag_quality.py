"""Does the review flag find the poor segmentations? Its expected Dice against the plain baseline
(mean maximum softmax probability inside the structure), on real cross-validations, JSON out.

    .venv/bin/python bench/qa/flag_quality.py [--datasets DSB2018,KvasirSEG,Hippocampus] [--minutes 2]
        [--work bench_work/flag_quality] [--output bench/results/flag_quality.json]

For each dataset (converted from ../shared/data): `medseg plan-and-train` with 5 folds and
``--minutes`` of training per fold (2d for the 2D sets, 3d_fullres for the Hippocampus); each
fold's validation keeps every held-out case's confidence (medseg.audit.confidence) and the
cross-validation its true Dice. Then, for each fold in turn, the calibration is fitted on the four
other folds' cases (medseg.audit.calibration.fit_calibration, as plan-and-train fits it on all five)
and applied to this fold's: every case is scored once, by a calibration that never saw it. Each
confidence feature (soft Dice, mean probability, mean max softmax, entropy) is calibrated in turn,
so the JSON says which one finds the poor cases best; the default (``FEATURE``) must be that one.
Reported per dataset: for catching structures (and cases: the lowest expected Dice of the case
against its mean Dice) under the poor line (Dice 0.8 in 2D, 0.85 in 3D), the AUROC of the expected
Dice and of the baseline, and the mean absolute error of the expected Dice. Run it alone: the
training budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from medseg.audit.confidence import CONFIDENCE_FEATURES

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {"DSB2018": SHARED / "microscopy-dsb2018", "KvasirSEG": SHARED / "endoscopy-kvasir-seg", "Hippocampus": SHARED / "mr3d-hippocampus-msd-train"}
RECIPES = {"Hippocampus": "MSD"}
CONFIGURATIONS = {"Hippocampus": "3d_fullres"}  # default: 2d


def medseg(*args: str, root: Path) -> str:
    env = dict(os.environ, MEDSEG_ROOT=str(root), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "medseg.cli", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def cross_validated_folder(dataset: str, root: Path, minutes: float) -> Path:
    from medseg_datasets import get_recipe

    recipe = get_recipe(RECIPES.get(dataset, dataset))
    raw = root / "raw" / recipe.folder_name_for(SOURCES[dataset])
    if not (raw / "dataset.json").is_file():
        medseg("datasets", "convert", recipe.name, "--src", str(SOURCES[dataset]), root=root)
    configuration = CONFIGURATIONS.get(dataset, "2d")
    medseg("plan-and-train", "--dataset", raw.name, "-c", configuration, "--folds", "0,1,2,3,4", "--time-budget-per-run", str(minutes), root=root)
    [folder] = sorted((root / "results" / raw.name).glob(f"unet__*__{configuration}"))
    return folder


def held_out_scores(folder: Path, feature: str) -> dict:
    """Every out-of-fold structure scored by a calibration (from ``feature``) fitted on the other folds."""
    from medseg.audit.calibration import apply_map, fit_calibration, flag_quality, validation_rows
    from medseg.model_folder import ModelFolder

    model = ModelFolder.open(folder)
    report = json.loads(model.crossval_summary_path().read_text())
    folds = [str(f) for f in report["folds"]]
    per_fold = {}
    for fold in folds:
        rows, missing = validation_rows(model, [fold], report["per_case"])
        if missing:
            raise SystemExit(f"{folder}: fold {fold} kept no confidence (trained before it was kept?)")
        per_fold[fold] = rows
    ndim = model.configuration.ndim
    scored = []
    for fold in folds:
        training = [row for other in folds if other != fold for row in per_fold[other]]
        calibration = fit_calibration(training, ndim, feature)
        for row in per_fold[fold]:
            fitted = calibration["labels"].get(row["label"])
            expected = apply_map(fitted["x"], fitted["y"], row[calibration["feature"]]) if fitted else row[calibration["feature"]]
            scored.append({**row, "fold": fold, "expected_dice": expected})
    poor = calibration["poor_dice"]
    structures = flag_quality(np.array([r["expected_dice"] for r in scored]), np.array([r["max_softmax"] for r in scored]),
                              np.array([r["dice"] for r in scored]), poor)
    cases = {}
    for row in scored:
        case = cases.setdefault(row["case"], {"expected": [], "baseline": [], "dice": []})
        case["expected"].append(row["expected_dice"])
        case["baseline"].append(row["max_softmax"])
        case["dice"].append(row["dice"])
    case_quality = flag_quality(np.array([min(c["expected"]) for c in cases.values()]), np.array([min(c["baseline"]) for c in cases.values()]),
                                np.array([float(np.mean(c["dice"])) for c in cases.values()]), poor)
    return {
        "model_folder": str(folder), "poor_dice": poor, "structures": len(scored), "poor_structures": int(sum(r["dice"] < poor for r in scored)),
        "cases": len(cases), "poor_cases": int(sum(np.mean(c["dice"]) < poor for c in cases.values())),
        "per_structure": structures, "per_case": case_quality,
        "flag_beats_baseline": (structures["auroc"] or 0) > (structures["baseline_auroc"] or 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="DSB2018,KvasirSEG,Hippocampus")
    parser.add_argument("--minutes", type=float, default=2.0, help="training minutes per fold")
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "flag_quality")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "flag_quality.json")
    args = parser.parse_args()
    results = {}
    for dataset in args.datasets.split(","):
        if dataset not in SOURCES:
            raise SystemExit(f"unknown dataset {dataset!r} (choose {', '.join(SOURCES)})")
        folder = cross_validated_folder(dataset, args.work / dataset, args.minutes)
        results[dataset] = {feature: held_out_scores(folder, feature) for feature in CONFIDENCE_FEATURES}
        print(dataset, json.dumps(results[dataset], indent=1))
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    content = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "minutes_per_fold": args.minutes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "datasets": {**previous.get("datasets", {}), **results},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(content, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
