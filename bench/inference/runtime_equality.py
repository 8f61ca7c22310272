"""Every runtime and precision of a trained model against PyTorch float32, on its own held-out cases:
Dice per label, the share of equal voxels and seconds per case; JSON out.

    MEDSEG_ROOT=... .venv/bin/python bench/inference/runtime_equality.py --model RESULTS/.../unet__medsegPlans__3d_fullres
        [--fold 0] [--cases 42] [--variants torch:float32,torch:bfloat16,openvino:float32,openvino:bfloat16]
        [--out bench/results/runtime_equality_Hippocampus.json]

The cases are the fold's held-out cases (its validation folder names them), read from the model's
raw dataset; every variant predicts the same images with the same options (all mirrorings), through
the front door (``open_predictor``), one process. The first variant is the reference. A variant
passes when every label's Dice against the reference is at least 0.999 on every case. Seconds are
wall time per case after a warm-up case (OpenVINO's conversion is outside the clock). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VARIANTS = "torch:float32,torch:bfloat16,openvino:float32,openvino:bfloat16"
MIN_DICE = 0.999


def main() -> None:
    from medseg.data.cases import load_case_images
    from medseg.data.layout import list_cases, load_dataset_description
    from medseg.inference.runtime_choice import dice_per_label
    from medseg.model_folders import open_model_folder
    from medseg.tasks import PredictorOptions, open_predictor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--fold", default="0")
    parser.add_argument("--cases", type=int, default=42)
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    folder = open_model_folder(args.model)
    ending = folder.info.file_ending
    held_out = sorted(p.name[: -len(ending)] for p in (folder.fold_folder(args.fold) / "validation").glob(f"*{ending}"))[: args.cases]
    cases = {c.case_id: c for c in list_cases(load_dataset_description(folder.raw_folder), "Tr")[0]}
    images = {case_id: load_case_images(cases[case_id]) for case_id in held_out}
    reference, results = None, {}
    for variant in args.variants.split(","):
        runtime, precision = variant.split(":")
        predictor = open_predictor(folder, PredictorOptions(folds=[args.fold], runtime=runtime, precision=precision))
        first = next(iter(images))
        predictor.predict_image(images[first], case_id=first)  # warm-up
        labels, seconds = {}, []
        for case_id, image in images.items():
            started = time.perf_counter()
            labels[case_id] = predictor.predict_image(image, case_id=case_id).segmentation.array
            seconds.append(time.perf_counter() - started)
        entry = {"seconds_per_case": round(float(np.mean(seconds)), 4), "precision": getattr(predictor, "precision", precision)}
        if reference is None:
            reference, entry["reference"] = labels, True
        else:
            dices = [dice_per_label(labels[c], reference[c]) for c in held_out]
            worst = {label: min(d.get(label, 1.0) for d in dices) for label in sorted({k for d in dices for k in d})}
            equal = float(np.mean([(labels[c] == reference[c]).mean() for c in held_out]))
            entry.update(min_dice_per_label=worst, equal_voxel_share=round(equal, 6), passes=min(worst.values(), default=1.0) >= MIN_DICE)
        results[variant] = entry
        print(variant, entry, flush=True)
    base = results[args.variants.split(",")[0]]["seconds_per_case"]
    for entry in results.values():
        entry["speedup_over_reference"] = round(base / entry["seconds_per_case"], 3)
    content = {"command": "python bench/inference/runtime_equality.py " + " ".join(sys.argv[1:]), "model": str(args.model), "fold": args.fold,
               "cases": held_out, "min_dice": MIN_DICE, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(content, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
