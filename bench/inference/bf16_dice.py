"""What bf16 autocast costs in Dice on trained models: every held-out case of each fold predicted
in float32 and under bf16 autocast (`medseg predict --precision bfloat16`) by the same fold's
network, scored against the reference labels; JSON out.

    .venv/bin/python bench/inference/bf16_dice.py [--models DIR,DIR] [--out bench/results/inference_bf16_dice.json]

Default models: the plain U-Nets trained by the family comparison benches
(`bench/pipeline/compare_families.py`, folders under bench_work/compare: the AbdomenMRI demo in 3D,
DSB2018 in 2D). Reported per model: mean foreground Dice of each precision against the reference,
the paired difference (bf16 - float32) with its largest per-case drop, the share of voxels whose
label differs, and the predict seconds of each. Run it alone (two cores; timings are wall-clock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info  # noqa: E402

COMPARE = REPO / "bench_work" / "compare"
DEFAULT_MODELS = [
    COMPARE / "AbdomenMRI-demo" / "results" / "Dataset901_AbdomenMRI-demo" / "unet__medsegPlans__3d_fullres",
    COMPARE / "DSB2018" / "results" / "Dataset002_DSB2018" / "unet__medsegPlans__2d",
]


def foreground_dice(prediction: np.ndarray, reference: np.ndarray, labels: dict[str, int]) -> float:
    from medseg.evaluation.metrics import dice

    values = [dice(prediction == v, reference == v) for name, v in labels.items() if v > 0]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else 1.0


def bench_model(folder: Path) -> dict:
    from medseg.data.cases import stack_channel_files
    from medseg.tasks import PredictorOptions, open_predictor
    from medseg.io import read_image
    from medseg.model_folder import ModelFolder

    model = ModelFolder.open(folder)
    raw = model.raw_folder
    ending = model.info.file_ending
    splits_file = next(f for f in (model.preprocessed_folder / "splits_final.json", model.preprocessed_folder.parent / "splits_final.json") if f.is_file())
    splits = json.loads(splits_file.read_text())
    rows = []
    for fold in model.folds():
        predictors = {p: open_predictor(model, PredictorOptions(folds=[fold], precision=p)) for p in ("float32", "bfloat16")}
        for case in splits[int(fold)]["val"]:
            image = stack_channel_files(sorted((raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")))
            reference = read_image(raw / "labelsTr" / f"{case}{ending}").array[0]
            row = {"fold": fold, "case": case}
            labels = {}
            for precision, predictor in predictors.items():
                start = time.perf_counter()
                labels[precision] = predictor.predict_image(image, case_id=case).segmentation.array[0]
                row[f"{precision}_seconds"] = time.perf_counter() - start
                row[f"{precision}_dice"] = foreground_dice(labels[precision], reference, model.info.labels)
            row["labels_differ"] = float((labels["float32"] != labels["bfloat16"]).mean())
            rows.append(row)
            print(f"{folder.name} fold {fold} {case}: dice fp32 {row['float32_dice']:.4f} bf16 {row['bfloat16_dice']:.4f}", flush=True)
    differences = np.array([r["bfloat16_dice"] - r["float32_dice"] for r in rows])
    return {
        "model": str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder), "cases": len(rows),
        "float32_dice": float(np.mean([r["float32_dice"] for r in rows])),
        "bfloat16_dice": float(np.mean([r["bfloat16_dice"] for r in rows])),
        "mean_difference": float(differences.mean()), "worst_case_difference": float(differences.min()),
        "labels_differ": float(np.mean([r["labels_differ"] for r in rows])),
        "float32_seconds": float(sum(r["float32_seconds"] for r in rows)),
        "bfloat16_seconds": float(sum(r["bfloat16_seconds"] for r in rows)),
        "per_case": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model folders [default: the compare benches' U-Nets]")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "inference_bf16_dice.json")
    args = parser.parse_args()
    folders = [Path(m) for m in args.models.split(",")] if args.models else DEFAULT_MODELS
    missing = [str(f) for f in folders if not (f / "model.json").is_file()]
    if missing:
        raise SystemExit(f"no trained model at {', '.join(missing)} (run bench/pipeline/compare_families.py first)")
    results = [bench_model(f) for f in folders]
    content = {"command": "python bench/inference/bf16_dice.py " + " ".join(sys.argv[1:]), "machine": machine_info(), "results": results}
    args.out.write_text(json.dumps(content, indent=1))
    for r in results:
        print(
            f"{r['model']}: {r['cases']} cases, Dice fp32 {r['float32_dice']:.4f} bf16 {r['bfloat16_dice']:.4f} "
            f"(mean diff {r['mean_difference']:+.4f}, worst case {r['worst_case_difference']:+.4f}), labels differ {100 * r['labels_differ']:.3f}%, "
            f"seconds fp32 {r['float32_seconds']:.1f} bf16 {r['bfloat16_seconds']:.1f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
