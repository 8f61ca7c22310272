"""MAE pretraining + fine-tuning vs a ViT from scratch, under the same total CPU budget, on the
shared NIH ChestX-ray14 set (1000 images at 64 px, its own train/test split), JSON out.

    .venv/bin/python bench/classification/pretraining.py [--minutes 10] [--pretrain-share 0.5]
        [--model vit] [--work bench_work/classification]

Both arms train fold 0 of the same patient-grouped splits (its validation picks the thresholds)
and predict the official test split, scored with `medseg evaluate` against labelsTs.csv:
- scratch: `plan-and-train --model vit --folds 0` for --minutes;
- pretrained: `pretrain --model mae_vit` for share x --minutes (training and unlabelled test
  images, labels unused), then `plan-and-train --model vit --pretrained` for the rest, with the
  classifier planned for the whole --minutes like the scratch arm (same input size and batch).
Each arm has its own MEDSEG_ROOT (the raw dataset is shared by a symlink). Run it alone: the
budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, arm_root, medseg  # noqa: E402
DATASET = "Dataset004_ChestXray14"






def score(root: Path, folder: Path, out: Path) -> dict:
    raw = root / "raw" / DATASET
    medseg("predict", "-i", raw / "imagesTs", "-o", out, "-m", folder, root=root)
    medseg("evaluate", out / "predictions.csv", raw / "labelsTs.csv", "-j", raw / "dataset.json", root=root)
    report = json.loads((out / "summary.json").read_text())
    crossval = json.loads((folder / "crossval_summary.json").read_text())
    log = json.loads((folder / "fold_0" / "log.json").read_text())
    return {
        "test": {"num_cases": report["num_cases"], "mean": report["mean"], "per_class_auc": {k: v["auc"] for k, v in report["per_class"].items()}},
        "fold0_validation_mean_auc": crossval["mean"]["auc"],
        "iterations": log["state"]["iteration"], "training_seconds": log["state"]["elapsed_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="total training minutes of each arm")
    parser.add_argument("--pretrain-share", type=float, default=0.5, help="share of the pretrained arm's minutes spent pretraining")
    parser.add_argument("--model", default="vit", help="the classifier (a ViT family or spec)")
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "classification")
    args = parser.parse_args()
    work = args.work
    if not (work / "raw" / DATASET).is_dir():
        medseg("datasets", "convert", "ChestXray14", "--src", SHARED / "xray-nih-chestxray14-64px", root=work)
    results = {}
    shutil.rmtree(work / "pretrained", ignore_errors=True)  # a rerun pretrains again (the scratch arm resumes)

    scratch = arm_root(work, "scratch", DATASET)
    medseg("plan-and-train", "--dataset", DATASET, "--model", args.model, "--folds", "0", "--time-budget-per-run", args.minutes, root=scratch)
    folder = next((scratch / "results" / DATASET).glob(f"{args.model.split('[')[0]}__*__2d"))
    results["scratch"] = {**score(scratch, folder, work / "scratch_test"), "minutes": args.minutes}

    pretrained = arm_root(work, "pretrained", DATASET)
    pretrain_minutes = args.minutes * args.pretrain_share
    medseg("pretrain", "--dataset", DATASET, "--model", "mae_vit", "--time-budget", pretrain_minutes, root=pretrained)
    encoder = next((pretrained / "results" / DATASET).glob("mae_vit__*__2d")) / "fold_all" / "encoder.pt"
    pretrain_log = json.loads((encoder.parent / "log.json").read_text())
    # planned for the arm's whole budget, as the scratch arm: the same input size and batch (planned
    # for the fine-tuning minutes alone, the plan would shrink the input to see the data more often)
    medseg("plan", DATASET, "--model", args.model, "--time-budget", args.minutes, root=pretrained)
    medseg(
        "plan-and-train", "--dataset", DATASET, "--model", args.model, "--folds", "0", "--time-budget-per-run", args.minutes - pretrain_minutes,
        "--pretrained", encoder, root=pretrained,
    )
    folder = next((pretrained / "results" / DATASET).glob(f"{args.model.split('[')[0]}__*__2d"))
    results["mae_pretrained"] = {
        **score(pretrained, folder, work / "pretrained_test"), "minutes": args.minutes, "pretrain_minutes": pretrain_minutes,
        "pretrain_iterations": pretrain_log["state"]["iteration"], "pretrain_final_masked_loss": pretrain_log["epochs"][-1].get("masked_loss"),
    }
    content = {
        "command": "python bench/classification/pretraining.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "dataset": "NIH ChestX-ray14 shared 1000-image set at 64 px; fold 0 of patient-grouped splits; official test split",
        "results": results,
    }
    target = REPO / "bench" / "results" / "classification_chestxray14_mae.json"
    target.write_text(json.dumps(content, indent=1))
    for arm, result in results.items():
        mean = result["test"]["mean"]
        print(f"{arm}: test mAUC {mean['auc']:.4f}, F1 {mean['f1']:.4f}, balanced accuracy {mean['balanced_accuracy']:.4f}")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
