"""The paediatric pneumonia task (Kermany, ../shared/data/xray-pneumonia-kermany-train) as a user
runs it: `plan-and-train --time-budget MINUTES` (the whole run: planning, preprocessing, the five
patient-grouped folds and their validations), one arm per classifier, JSON out.

    .venv/bin/python bench/classification/kermany.py [--arms resnet18,vit,mae_vit] [--minutes 10]
        [--pretrain-share 0.5] [--folds 0,1,2,3,4] [--dataset KermanyPneumonia] [--work bench_work/kermany]
        [--name NAME]

Arms (each in its own MEDSEG_ROOT over one converted copy of the images):
- resnet18, vit, or any classification family or spec: `plan-and-train --model ARM`; ``SPEC@SIDE``
  (e.g. ``vit[patch=8]@96``) adds `--input-size SIDE`: the plan search over sides, widths and patches;
  ``SPEC~KEY=JSON`` plans first (`medseg plan`, one fold's share of the minutes) and sets the plan's
  training KEY (e.g. ``hag_cnn~gradient_routing=false``: the gated network without routing);
- mae_vit (or a spec, e.g. ``mae_vit[mask_ratio=0.75]``): MAE pretraining (`pretrain --model SPEC`,
  the dataset's images, labels unused, plus every image under --pretrain-images: NIH-1000 unless
  told otherwise) for --pretrain-share of the minutes, then the ViT fine-tuned from that encoder in
  the rest: equal total budget. When the vit arm ran first (same results file), the pretraining
  takes its input side (`pretrain --input-size`) and the fine-tuning its plans (same input size and
  batch), so that MAE and scratch differ only in the initial weights. ``MAE_SPEC~KEY=JSON`` sets the
  fine-tuning plan's training KEY (e.g. ``mae_vit~pretrained_layer_decay=1.0``).

Recorded per arm: the pooled out-of-fold AUC (calibrated probabilities, as predict gives them), each
fold's AUC, the patient-level AUC (mean and max of a patient's images), the test-time views' effect,
the temperature's NLL and ECE before and after (held-out folds), the plan, iterations and seconds.
Run it alone: the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, arm_root, medseg  # noqa: E402

SOURCE = SHARED / "xray-pneumonia-kermany-train"
NIH_IMAGES = SHARED / "xray-nih-chestxray14-64px" / "NIH1000"


def converted(work: Path, dataset: str) -> str:
    """Convert once under WORK/raw; -> the dataset folder's name."""
    found = sorted((work / "raw").glob(f"Dataset*_{dataset}")) if (work / "raw").is_dir() else []
    if not found:
        medseg("datasets", "convert", dataset, "--src", SOURCE, root=work)
        found = sorted((work / "raw").glob(f"Dataset*_{dataset}"))
    return found[0].name


def summarise(folder: Path, seconds: float) -> dict:
    report = json.loads((folder / "crossval_summary.json").read_text())
    plans = json.loads((folder / "plans.json").read_text()) if (folder / "plans.json").is_file() else {}
    configuration = plans.get("configurations", {}).get("2d", {})
    folds = {}
    for fold in report["folds"]:
        log = json.loads((folder / f"fold_{fold}" / "log.json").read_text())
        folds[str(fold)] = {"auc": report["fold_mean_auc"].get(str(fold), report["fold_mean_auc"].get(fold)),
                            "iterations": log["state"]["iteration"], "training_seconds": round(log["state"]["elapsed_s"], 1)}
    patients = report.get("patients", {})
    return {
        "cases": report["num_cases"], "mean_auc": report["mean"]["auc"], "per_class_auc": {k: v["auc"] for k, v in report["per_class"].items()},
        "balanced_accuracy": report["mean"]["balanced_accuracy"], "accuracy": report.get("accuracy"),
        "patients": {how: patients[how]["mean"]["auc"] for how in ("mean", "max") if how in patients} | {"count": patients.get("patients")},
        "tta": report["calibration"]["tta"], "calibration": report["calibration"]["quality"], "temperature": report["calibration"]["temperature"],
        "folds": folds, "input_size": configuration.get("patch_size"), "batch_size": configuration.get("batch_size"),
        "architecture": configuration.get("architecture"), "wall_seconds": round(seconds, 1),
    }


def changed_plans(root: Path, dataset: str, spec: str, change: str, run_minutes: float, sized: list) -> list:
    """CHANGE = 'KEY=JSON': plan SPEC as benchPlans and set the plan's training KEY; -> plan-and-train's
    --plans-name arguments (none without a change)."""
    if not change:
        return []
    medseg("fingerprint", dataset, root=root)
    medseg("plan", dataset, "--model", spec, "--plans-name", "benchPlans", "--time-budget", run_minutes, *sized, root=root)
    plans_file = root / "preprocessed" / dataset / "benchPlans.json"
    plans = json.loads(plans_file.read_text())
    key, _, value = change.partition("=")
    plans["configurations"]["2d"]["training"][key] = json.loads(value)
    plans_file.write_text(json.dumps(plans, indent=1))
    return ["--plans-name", "benchPlans"]


def run_arm(arm: str, args, work: Path, dataset: str, results: dict) -> dict:
    root = arm_root(work, arm.replace("[", "_").replace("]", "").replace(",", "_").replace("=", "-").replace("@", "_side").replace("~", "_"), dataset)
    start = time.perf_counter()
    common = ["--dataset", dataset, "--folds", args.folds]
    if re.split(r"[\[~@]", arm)[0] != "mae_vit":
        arm, _, change = arm.partition("~")  # SPEC~KEY=VALUE: the plan's training block changed (e.g. gradient_routing=false)
        spec, _, side = arm.partition("@")  # SPEC@SIDE: plan-and-train --input-size SIDE (the plan search)
        sized = ["--input-size", side] if side else []
        named = changed_plans(root, dataset, spec, change, args.minutes / len(args.folds.split(",")), sized)
        medseg("plan-and-train", *common, "--model", spec, "--time-budget", args.minutes, *sized, *named, root=root)
        family = spec.split("[")[0]
        return summarise(next((root / "results" / dataset).glob(f"{family}__*__2d")), time.perf_counter() - start)
    shutil.rmtree(root / "results" / dataset, ignore_errors=True)  # a rerun pretrains again
    arm, _, change = arm.partition("~")  # MAE_SPEC~KEY=VALUE: the fine-tuning plan's training KEY (e.g. pretrained_layer_decay=1.0)
    pretrain_minutes = args.minutes * args.pretrain_share
    scratch = work / "vit" / "preprocessed" / dataset
    scratch_plans = scratch / "medsegPlans_vit.json"
    same_plans = "vit" in results and scratch_plans.is_file()
    sized = ["--input-size", json.loads(scratch_plans.read_text())["configurations"]["2d"]["patch_size"][0]] if same_plans else []
    images = [part for folder in args.pretrain_images for part in ("--images", folder)]
    medseg("pretrain", "--dataset", dataset, "--model", arm, "--time-budget", pretrain_minutes, *images, *sized, "--replan", root=root)
    encoder = next((root / "results" / dataset).glob("mae_vit__*__2d")) / "fold_all" / "encoder.pt"
    pretrain_log = json.loads((encoder.parent / "log.json").read_text())
    pretrain_plans = json.loads(next((root / "preprocessed" / dataset).glob("medsegPlans_mae_vit*.json")).read_text())
    if same_plans and not change:  # the scratch ViT's plans: the same input size and batch
        target = root / "preprocessed" / dataset
        target.mkdir(parents=True, exist_ok=True)
        for plans in scratch.glob("*.json"):
            shutil.copy2(plans, target / plans.name)
    named = changed_plans(root, dataset, "vit", change, (args.minutes - pretrain_minutes) / len(args.folds.split(",")), sized)
    medseg("plan-and-train", *common, "--model", "vit", "--pretrained", encoder, "--time-budget", args.minutes - pretrain_minutes, *named, root=root)
    summary = summarise(next((root / "results" / dataset).glob("vit__*__2d")), time.perf_counter() - start)
    summary.update(pretrain_minutes=pretrain_minutes, pretrain_iterations=pretrain_log["state"]["iteration"],
                   pretrain_input_size=pretrain_plans["configurations"]["2d"]["patch_size"], pretrain_images=[str(p) for p in args.pretrain_images],
                   pretrain_final_masked_loss=pretrain_log["epochs"][-1].get("masked_loss") if pretrain_log.get("epochs") else None)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="resnet18,vit,mae_vit")
    parser.add_argument("--minutes", type=float, default=10.0, help="plan-and-train --time-budget of each arm (the mae_vit arm: pretraining included)")
    parser.add_argument("--pretrain-share", type=float, default=0.5, help="share of the mae_vit arm's minutes spent pretraining")
    parser.add_argument("--pretrain-images", type=Path, nargs="*", default=[NIH_IMAGES], help="image folders the MAE arms also pretrain on [NIH-1000]; none: give the flag alone")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--dataset", default="KermanyPneumonia", choices=["KermanyPneumonia", "KermanyPneumonia3"])
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "kermany")
    parser.add_argument("--name", help="results name [default: classification_DATASET_MINUTESmin]")
    args = parser.parse_args()
    dataset = converted(args.work, args.dataset)
    target = REPO / "bench" / "results" / f"{args.name or f'classification_{args.dataset}_{args.minutes:g}min'}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results = json.loads(target.read_text()).get("results", {}) if target.is_file() else {}  # arms run before are kept
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        results[arm] = {**run_arm(arm, args, args.work, dataset, results), "commit": commit or None}
        shown = results[arm]
        print(f"{arm}: pooled out-of-fold AUC {shown['mean_auc']:.4f}, patients {shown['patients']}, TTA {shown['tta']}", flush=True)
        content = {  # written after every arm: a later arm that fails loses nothing
            "command": "python bench/classification/kermany.py " + " ".join(sys.argv[1:]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "dataset": f"{args.dataset}: shared Kermany training split, exact duplicates dropped, folds grouped by patient",
            "minutes_per_arm": args.minutes, "results": results,
        }
        target.write_text(json.dumps(content, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
